"""Client observation -> policy observation: flatten, key map, view assembly, checks.

Clients send maps in their own layout (LIBERO: `observation/image`, `observation/state`,
`prompt`; nested maps are flattened with '/'). A key map names, for each client key, the
graph input port it feeds: `port` or `port[i]` for view i of a multi-view image port. A key
mapped to null is accepted and dropped. Without a key map, client keys are the port names.

The checks of each value are the policy's own (graphvla/runners/observation.py `check`), run
here with the client key as the name: every one raises ObservationError naming the client key
and what was expected, so one bad request is answered with a useful message and never reaches
the batched forward pass."""
from __future__ import annotations

import re

import numpy as np

from ...policy.observation import ObservationError, check, describe

__all__ = ["ObservationError", "ObservationMapper", "flatten"]

_VIEW = re.compile(r"^(?P<port>[A-Za-z_][A-Za-z0-9_]*)(\[(?P<view>\d+)\])?$")


def flatten(obs: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in obs.items():
        if not isinstance(k, str):
            raise ObservationError(f"observation keys must be strings, got {k!r}")
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "/"))
        else:
            out[key] = v
    return out


class ObservationMapper:
    """Checks and converts one client observation into {port: value} for Policy.infer."""

    def __init__(self, inputs: dict, key_map: dict | None = None):
        self.inputs = {p: dict(d or {}) for p, d in inputs.items()}
        self.routes: dict[str, tuple[str, int | None] | None] = {}
        if key_map:
            for client_key, target in key_map.items():
                if target is None:
                    self.routes[client_key] = None
                    continue
                m = _VIEW.match(str(target))
                if not m or m["port"] not in self.inputs:
                    raise ValueError(f"serve.key_map.{client_key}: '{target}' is not an input port "
                                     f"(ports: {', '.join(self.inputs)}; use 'port' or 'port[i]' for view i)")
                view = int(m["view"]) if m["view"] is not None else None
                decl = self.inputs[m["port"]]
                if view is not None and (decl.get("kind") != "image" or view >= int(decl.get("views", 1))):
                    raise ValueError(f"serve.key_map.{client_key}: '{target}': port '{m['port']}' has "
                                     f"{decl.get('views', 1) if decl.get('kind') == 'image' else 'no'} views")
                self.routes[client_key] = (m["port"], view)
            mapped = {r[0] for r in self.routes.values() if r}
            for port, decl in self.inputs.items():
                if port not in mapped and port not in self.routes:
                    self.routes[port] = (port, None)  # unmapped ports keep their own name
        else:
            self.routes = {p: (p, None) for p in self.inputs}
        self._check_views()

    def _check_views(self):
        for port, decl in self.inputs.items():
            whole = [k for k, r in self.routes.items() if r == (port, None)]
            views = sorted(r[1] for r in self.routes.values() if r and r[0] == port and r[1] is not None)
            if len(whole) > 1 or (whole and views):
                feeders = [k for k, r in self.routes.items() if r and r[0] == port]
                raise ValueError(f"serve.key_map: port '{port}' is fed by several keys ({', '.join(feeders)}); "
                                 f"map one key to it, or one key per view with '{port}[i]'")
            if views and views != list(range(int(decl.get("views", 1)))):
                raise ValueError(f"serve.key_map: image port '{port}' has {decl.get('views', 1)} views "
                                 f"but the key map feeds views {views}")

    def expected_keys(self) -> list[str]:
        """The client keys a request must carry (optional ports excluded)."""
        return [k for k, r in self.routes.items() if r and not self.inputs[r[0]].get("optional")]

    def describe(self) -> dict:
        return {k: (None if r is None else (r[0] if r[1] is None else f"{r[0]}[{r[1]}]"))
                for k, r in self.routes.items()}

    def __call__(self, raw) -> dict:
        if not isinstance(raw, dict):
            raise ObservationError(f"a request must be a map of observation keys, got {type(raw).__name__}")
        obs = flatten(raw)
        extra = [k for k in obs if k not in self.routes]
        if extra:
            raise ObservationError(f"unexpected key '{extra[0]}' (expected keys: {', '.join(self.expected_keys())})")
        missing = [k for k in self.expected_keys() if k not in obs]
        if missing:
            k = missing[0]
            raise ObservationError(f"missing key '{k}': expected {self._expect(k)}")
        views: dict[str, dict[int, np.ndarray]] = {}
        out = {}
        for key, value in obs.items():
            route = self.routes[key]
            if route is None:
                continue
            port, view = route
            checked = check(f"'{key}'", self.inputs[port], value, one_view=view is not None)
            if view is None:
                out[port] = checked
            else:
                views.setdefault(port, {})[view] = checked
        for port, by_view in views.items():
            missing_views = [v for v in range(int(self.inputs[port].get("views", 1))) if v not in by_view]
            if missing_views:  # only reachable for optional ports fed view by view
                key = next(k for k, r in self.routes.items() if r == (port, missing_views[0]))
                raise ObservationError(f"missing key '{key}': expected {self._expect(key)}")
            layouts = {(str(a.dtype), a.shape) for a in by_view.values()}
            if len(layouts) > 1:
                raise ObservationError(f"the views of image port '{port}' must share one layout, got "
                                       + ", ".join(f"{d} {list(s)}" for d, s in sorted(layouts)))
            out[port] = np.stack([by_view[v] for v in sorted(by_view)])
        return out

    # --- checks: the policy's own (runners/observation.py), named by the client key -------------

    def _expect(self, key: str) -> str:
        port, view = self.routes[key]
        return describe(self.inputs[port], one_view=view is not None)
