"""Client observation -> policy observation: flatten, key map, view assembly, checks.

Clients send maps in their own layout (LIBERO: `observation/image`, `observation/state`,
`prompt`; nested maps are flattened with '/'). A key map names, for each client key, the
graph input port it feeds: `port` or `port[i]` for view i of a multi-view image port. A key
mapped to null is accepted and dropped. Without a key map, client keys are the port names.

Every check raises ObservationError naming the client key and what was expected, so one bad
request is answered with a useful message and never reaches the batched forward pass."""
from __future__ import annotations

import re

import numpy as np

_VIEW = re.compile(r"^(?P<port>[A-Za-z_][A-Za-z0-9_]*)(\[(?P<view>\d+)\])?$")


class ObservationError(ValueError):
    """A request that does not match the graph's inference inputs."""


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
            decl = self.inputs[port]
            kind = decl.get("kind")
            if kind == "image":
                if view is None:
                    out[port] = self._image(key, value, decl, stacked=True)
                else:
                    views.setdefault(port, {})[view] = self._image(key, value, decl, stacked=False)
            elif kind == "text":
                out[port] = self._text(key, value)
            else:
                out[port] = self._numeric(key, value, decl)
        for port, by_view in views.items():
            missing_views = [v for v in range(int(self.inputs[port].get("views", 1))) if v not in by_view]
            if missing_views:  # only reachable for optional ports fed view by view
                key = next(k for k, r in self.routes.items() if r == (port, missing_views[0]))
                raise ObservationError(f"missing key '{key}': expected {self._expect(key)}")
            layouts = {a.shape for a in by_view.values()}
            if len(layouts) > 1:
                raise ObservationError(f"the views of image port '{port}' must share one layout, got "
                                       f"{sorted(list(s) for s in layouts)}")
            out[port] = np.stack([by_view[v] for v in sorted(by_view)])
        return out

    # --- per-kind checks -------------------------------------------------------------------------

    def _expect(self, key: str) -> str:
        port, view = self.routes[key]
        decl = self.inputs[port]
        kind = decl.get("kind")
        if kind == "image":
            h, w = decl.get("size", ["H", "W"])
            one = f"uint8 [{h}, {w}, 3] (HWC) or float32 [3, {h}, {w}] in [0, 1]"
            v = int(decl.get("views", 1))
            return one if view is not None or v == 1 else f"{v} views stacked: uint8 [{v}, {h}, {w}, 3] or float32 [{v}, 3, {h}, {w}]"
        if kind == "text":
            return "a string"
        if kind == "state":
            return f"float [{decl.get('dim', 'D')}] (state)"
        return f"an array for input '{port}' ({kind})"

    def _image(self, key, value, decl, stacked: bool) -> np.ndarray:
        """Canonical layouts the Policy accepts: uint8 [.., H, W, 3] or float [.., 3, H, W].
        Arrays may stay read-only views of the message: Policy.infer copies them into tensors."""
        def bad():
            return ObservationError(f"'{key}': expected {self._expect(key)}, got {_describe(value)}")

        if not isinstance(value, np.ndarray) or not (value.dtype == np.uint8 or value.dtype.kind == "f"):
            raise bad()
        views = int(decl.get("views", 1))
        if stacked:
            frames = value[None] if value.ndim == 3 and views == 1 else value
            if frames.ndim != 4 or frames.shape[0] != views:
                raise bad()
        else:
            if value.ndim != 3:
                raise bad()
            frames = value[None]
        size = tuple(int(s) for s in decl.get("size") or ())
        hwc = frames.shape[3] == 3 and (not size or frames.shape[1:3] == size)
        chw = frames.shape[1] == 3 and (not size or frames.shape[2:4] == size)
        if not (hwc or chw):
            raise bad()
        if value.dtype == np.uint8 and not hwc:
            frames = frames.transpose(0, 2, 3, 1)
        elif value.dtype.kind == "f":
            if not chw:
                frames = frames.transpose(0, 3, 1, 2)
            frames = frames.astype(np.float32, copy=False)
            if not np.all(np.isfinite(frames)):
                raise ObservationError(f"'{key}': image contains NaN or inf")
        return frames if stacked else frames[0]

    def _text(self, key, value) -> str:
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ObservationError(f"'{key}': expected a UTF-8 string, got undecodable bytes") from e
        if not isinstance(value, str):
            raise ObservationError(f"'{key}': expected a string, got {_describe(value)}")
        return value

    def _numeric(self, key, value, decl) -> np.ndarray:
        if isinstance(value, (list, tuple)):
            try:
                value = np.asarray(value, dtype=np.float32)
            except (TypeError, ValueError):
                raise ObservationError(f"'{key}': expected {self._expect(key)}, got a list of non-numbers") from None
        if not isinstance(value, np.ndarray) or value.dtype.kind not in "biuf":
            raise ObservationError(f"'{key}': expected {self._expect(key)}, got {_describe(value)}")
        if decl.get("kind") == "state":
            dim = decl.get("dim")
            if value.ndim not in (1, 2) or (dim is not None and value.shape[-1] != int(dim)):
                raise ObservationError(f"'{key}': expected {self._expect(key)}, got {_describe(value)}")
            if not np.all(np.isfinite(value)):
                raise ObservationError(f"'{key}': state contains NaN or inf")
            return value.astype(np.float32)
        return value


def _describe(value) -> str:
    if isinstance(value, np.ndarray):
        return f"{value.dtype} {list(value.shape)}"
    if isinstance(value, (list, tuple)):
        return f"a list of {len(value)}"
    return type(value).__name__
