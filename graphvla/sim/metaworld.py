"""Meta-World helpers shared by the recorder (`graphvla data metaworld`) and the evaluator.

One place decides how an environment is made and seeded, how its camera image is oriented, which
part of the 39-dim observation is the robot state and which instruction goes with a task, so that
recorded demonstrations and evaluation episodes see exactly the same observations.
"""
from __future__ import annotations

import os

import numpy as np

# MuJoCo picks its GL backend at import time: EGL renders off-screen on CPU with Mesa.
os.environ.setdefault("MUJOCO_GL", "egl")

MT10 = [
    "reach-v3", "push-v3", "pick-place-v3", "door-open-v3", "drawer-open-v3",
    "drawer-close-v3", "button-press-topdown-v3", "peg-insert-side-v3", "window-open-v3", "window-close-v3",
]

# One instruction per task, in our words (starVLA's dataset has its own wording; a policy only
# needs the instruction to tell the 50 tasks apart, and recording and evaluation share this table).
INSTRUCTIONS = {
    "assembly-v3": "pick up the nut and place it onto the peg",
    "basketball-v3": "dunk the basketball into the basket",
    "bin-picking-v3": "grasp the puck from one bin and place it into the other bin",
    "box-close-v3": "grasp the cover and close the box with it",
    "button-press-topdown-v3": "press the button from the top",
    "button-press-topdown-wall-v3": "bypass the wall and press the button from the top",
    "button-press-v3": "press the button",
    "button-press-wall-v3": "bypass the wall and press the button",
    "coffee-button-v3": "push the button on the coffee machine",
    "coffee-pull-v3": "pull the mug from the coffee machine",
    "coffee-push-v3": "push the mug under the coffee machine",
    "dial-turn-v3": "rotate the dial 180 degrees",
    "disassemble-v3": "pick the nut off the peg",
    "door-close-v3": "close the door",
    "door-lock-v3": "lock the door by rotating the lock clockwise",
    "door-open-v3": "open the door",
    "door-unlock-v3": "unlock the door by rotating the lock counter-clockwise",
    "drawer-close-v3": "close the drawer",
    "drawer-open-v3": "open the drawer",
    "faucet-close-v3": "rotate the faucet clockwise",
    "faucet-open-v3": "rotate the faucet counter-clockwise",
    "hammer-v3": "hammer the screw into the wall",
    "hand-insert-v3": "insert the gripper into the hole",
    "handle-press-side-v3": "press the handle down sideways",
    "handle-press-v3": "press the handle down",
    "handle-pull-side-v3": "pull the handle up sideways",
    "handle-pull-v3": "pull the handle up",
    "lever-pull-v3": "pull the lever up",
    "peg-insert-side-v3": "insert the peg into the hole from the side",
    "peg-unplug-side-v3": "unplug the peg sideways",
    "pick-out-of-hole-v3": "pick up the puck from the hole",
    "pick-place-v3": "pick up the puck and place it at the goal position",
    "pick-place-wall-v3": "pick up the puck, bypass the wall and place it at the goal position",
    "plate-slide-back-side-v3": "slide the plate back sideways into the cabinet",
    "plate-slide-back-v3": "slide the plate back into the cabinet",
    "plate-slide-side-v3": "slide the plate sideways into the cabinet",
    "plate-slide-v3": "slide the plate into the cabinet",
    "push-back-v3": "push the puck back to the goal position",
    "push-v3": "push the puck to the goal position",
    "push-wall-v3": "bypass the wall and push the puck to the goal position",
    "reach-v3": "reach the red goal position with the gripper",
    "reach-wall-v3": "bypass the wall and reach the goal position",
    "shelf-place-v3": "pick up the puck and place it onto the shelf",
    "soccer-v3": "kick the soccer ball into the goal",
    "stick-pull-v3": "grasp the stick and pull the box with it",
    "stick-push-v3": "grasp the stick and push the box with it",
    "sweep-into-v3": "sweep the puck into the hole",
    "sweep-v3": "sweep the puck off the table",
    "window-close-v3": "slide the window closed",
    "window-open-v3": "slide the window open",
}


def instruction(task: str) -> str:
    """The instruction a policy gets for `task` (any of the 50 Meta-World v3 tasks)."""
    if task not in INSTRUCTIONS:
        _check_task(task)  # names the closest task when it is a typo
        raise ValueError(f"no instruction for Meta-World task '{task}'")
    return INSTRUCTIONS[task]

# Policy class names that do not follow the Sawyer<CamelTask>V3Policy pattern.
_POLICY_NAMES = {"peg-insert-side-v3": "SawyerPegInsertionSideV3Policy"}

STATE_DIM = 4  # hand xyz + gripper opening: obs[0:4]
ACTION_DIM = 4  # end-effector delta xyz + gripper
OBS_DIM = 39  # the full Meta-World observation (hand, gripper, objects, goal)
BENCHMARK_SEED = 0  # fixes MT1's list of task variants; episodes differ by their reset seed
CAMERAS = ("corner", "corner2", "corner3", "topview", "behindGripper", "gripperPOV")


def bucket_of_task(protocol: str, bucket_tasks: dict, task: str) -> str:
    """The bucket of a protocol's task; a task outside the protocol is an error naming it."""
    for b, names in bucket_tasks.items():
        if task in names:
            return b
    raise ValueError(f"'{task}' is not a task of the {protocol} protocol")


def select_tasks(protocol: str, known: list[str], bucket_tasks: dict, buckets=None, names=None) -> list[str]:
    """A protocol's tasks (`known`, in its order) restricted to `buckets` and/or `names` (bucket
    names, task names, MT10: the protocol's tasks MT10 also has, MT50: all), kept in its order; an
    unknown bucket or task is an error naming the protocol (and the nearest task)."""
    wanted = set()
    for b in buckets or []:
        if b not in bucket_tasks:
            raise ValueError(f"unknown bucket '{b}'; buckets: {', '.join(bucket_tasks)}")
        wanted.update(bucket_tasks[b])
    for n in names or []:
        if n.upper() == "MT10":
            wanted.update(MT10)
        elif n.upper() == "MT50":
            wanted.update(known)
        elif n in bucket_tasks:
            wanted.update(bucket_tasks[n])
        elif n in known:
            wanted.add(n)
        else:
            import difflib

            hint = difflib.get_close_matches(n, known, n=1)
            raise ValueError(f"'{n}' is not a task of the {protocol} protocol" + (f" (did you mean '{hint[0]}'?)" if hint else ""))
    if not buckets and not names:
        return list(known)
    return [t for t in known if t in wanted]


def _check_task(task: str) -> None:
    import metaworld

    known = sorted(metaworld.ALL_V3_ENVIRONMENTS)
    if task not in known:
        import difflib

        hint = difflib.get_close_matches(task, known, n=1)
        raise ValueError(f"unknown Meta-World task '{task}'" + (f" (did you mean '{hint[0]}'?)" if hint else "")
                         + f"; MT10 tasks: {', '.join(MT10)}")


def make_env(task: str, seed: int = 0, size: int = 128, camera: str = "corner"):
    """A Meta-World MT1 environment for `task` rendering `size`x`size` RGB frames from `camera`,
    already reset to episode `seed`.

    The benchmark's 50 goal/object variants are always drawn with BENCHMARK_SEED, so an episode
    depends on its own seed only: `reset_env(env, s)` starts the same scene in any env of `task`."""
    import gymnasium as gym
    import metaworld  # noqa: F401  (registers the Meta-World/* environments)

    _check_task(task)
    if camera not in CAMERAS:
        raise ValueError(f"unknown camera '{camera}'; choose one of {', '.join(CAMERAS)}")
    env = gym.make("Meta-World/MT1", env_name=task, seed=BENCHMARK_SEED, render_mode="rgb_array",
                   camera_name=camera, width=size, height=size)
    _plain_rendering(env)
    reset_env(env, seed)
    return env


def _plain_rendering(env) -> None:
    """Render without multisampling, shadows and reflections: on Mesa's CPU rasterizer they
    cost ~95% of the frame time (170 ms -> 10 ms at 64x64) and add little a policy needs.
    Recording and evaluation both get this from `make_env`, so they see identical frames."""
    import mujoco

    u = env.unwrapped
    u.model.vis.quality.offsamples = 0  # read when the off-screen buffer is created below
    viewer = u.mujoco_renderer._get_viewer("rgb_array")
    viewer.scn.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
    viewer.scn.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
    viewer.free = _freeing_in_own_context(viewer)


def _freeing_in_own_context(viewer):
    """MuJoCo frees a render context's GL objects (framebuffers, textures) in whatever GL
    context is current when it is garbage-collected, which blanks the frames of another live env
    (ids collide). Free them while this viewer's own context is current, once."""
    free_gl = viewer.free

    def free():
        con = getattr(viewer, "con", None)
        try:
            if con is not None and getattr(viewer.opengl_context, "_context", True):
                viewer.make_context_current()
                con.free()
            free_gl()
        except Exception:  # noqa: BLE001  (at interpreter exit EGL may already be torn down)
            pass

    return free


def reset_env(env, seed: int):
    """Start an episode whose scene (which of the 50 goal/object variants) is a function of
    `seed` only. Meta-World ignores `reset(seed=...)`; its own `seed()` re-seeds the generator
    the task-sampling wrapper then draws the variant from."""
    env.unwrapped.seed(int(seed))
    return env.reset()


def render(env) -> np.ndarray:
    """The camera frame, HxWx3 uint8, upright. MuJoCo reads the frame buffer bottom-row first,
    so the raw image is upside down; flipping the rows fixes it (checked by projecting the robot
    base through the camera: it sits left and above centre, as in the flipped frame).

    The env's GL context is made current first: when another env is garbage-collected its
    renderer releases whatever context is current, which would otherwise give black frames."""
    viewer = env.unwrapped.mujoco_renderer._get_viewer("rgb_array")
    viewer.make_context_current()
    return np.ascontiguousarray(env.render()[::-1])


def robot_state(obs: np.ndarray) -> np.ndarray:
    """hand xyz + gripper opening, float32[4]."""
    return np.asarray(obs[:STATE_DIM], dtype=np.float32)


_policies: dict = {}


def expert_policy(task: str):
    """Meta-World's scripted expert for `task` (cached; the policies are stateless)."""
    if task not in _policies:
        import metaworld.policies as P

        _check_task(task)
        base = task[: -len("-v3")] if task.endswith("-v3") else task
        name = _POLICY_NAMES.get(task, "Sawyer" + "".join(w.capitalize() for w in base.split("-")) + "V3Policy")
        if not hasattr(P, name):
            raise ValueError(f"no scripted expert policy for '{task}' (looked for metaworld.policies.{name})")
        _policies[task] = getattr(P, name)()
    return _policies[task]


def expert_action(task: str, obs: np.ndarray) -> np.ndarray:
    """The expert's action for a full 39-dim observation, float32[4] clipped to [-1, 1]."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the policies warn that their gains exceed the action range
        a = expert_policy(task).get_action(obs)
    return np.clip(np.asarray(a, dtype=np.float32), -1.0, 1.0)


def max_steps(env) -> int:
    spec = getattr(env, "spec", None)
    return int(getattr(spec, "max_episode_steps", None) or 500)


def render_problem() -> str | None:
    """None when Meta-World renders here, else why not (tests skip with this reason)."""
    try:
        env = make_env("reach-v3", seed=0, size=32)
        try:
            reset_env(env, 0)
            frame = render(env)
        finally:
            env.close()
    except Exception as e:  # noqa: BLE001  (missing GL libraries surface as many error types)
        return f"Meta-World cannot render with MUJOCO_GL={os.environ.get('MUJOCO_GL')}: {type(e).__name__}: {e}"
    if frame.shape != (32, 32, 3) or frame.max() == 0:
        return f"Meta-World rendered an empty frame {frame.shape} with MUJOCO_GL={os.environ.get('MUJOCO_GL')}"
    return None
