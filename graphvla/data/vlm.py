"""Image-text data in LLaVA-JSON form for co-training (the 'vlm' stream).

A file holds a list of records:
    {"id": "...", "image": "rel/path.jpg" (or a list of paths, or absent),
     "conversations": [{"from": "human", "value": "<image>\\nWhat is on the table?"},
                       {"from": "gpt", "value": "A red puck."}, ...]}
Each human -> gpt exchange is one item: the prompt is the human turn (earlier turns of the same
conversation prepended as context, the <image> placeholder removed), the answer is the gpt turn.
The data YAML maps the stream's input ports to the fields 'image', 'prompt', 'answer'."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .images import image_tensor
from .lerobot import DatasetError
from .ports import StreamPorts

FIELDS = ("image", "prompt", "answer")
HUMAN, GPT = ("human", "user"), ("gpt", "assistant")


class LlavaDataset(torch.utils.data.Dataset):
    def __init__(self, json_path, ports: StreamPorts, keys: dict | None = None, image_root=None):
        self.path = Path(json_path)
        if not self.path.exists():
            raise FileNotFoundError(f"missing LLaVA JSON file {self.path}")
        self.image_root = Path(image_root) if image_root else self.path.parent
        self.ports = ports
        self.keys = dict(keys or self._default_keys(ports))
        for port, field in self.keys.items():
            if port not in ports.ports:
                raise DatasetError(f"{self.path}: keys: '{port}' is no input of the '{ports.stream}' stream "
                                   f"(inputs: {', '.join(ports.ports)})")
            if field not in FIELDS:
                raise DatasetError(f"{self.path}: keys: {port}: '{field}' is not a LLaVA field ({', '.join(FIELDS)})")
        for p in ports.data_ports:
            if p.name not in self.keys and not p.optional:
                raise DatasetError(f"{self.path}: input '{p.name}' of the '{ports.stream}' stream has no source; "
                                   f"map it in keys: (fields: {', '.join(FIELDS)})")
        try:
            records = json.loads(self.path.read_text())
        except json.JSONDecodeError as e:
            raise DatasetError(f"{self.path}: invalid JSON ({e})") from e
        if not isinstance(records, list) or not records:
            raise DatasetError(f"{self.path}: expected a non-empty JSON list of conversations")
        self.items = [it for i, r in enumerate(records) for it in _exchanges(r, i, self.path)]
        if not self.items:
            raise DatasetError(f"{self.path}: no human -> gpt exchange found")

    @staticmethod
    def _default_keys(ports: StreamPorts) -> dict:
        out = {}
        for p in ports.data_ports:
            if p.kind == "image":
                out[p.name] = "image"
            elif p.kind == "text":
                out[p.name] = "answer" if ("answer" in p.name or p.decl.get("train_only")) else "prompt"
        return out

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        images, prompt, answer = self.items[i]
        values = {"prompt": prompt, "answer": answer}
        item = {}
        for name, port in self.ports.ports.items():
            field = self.keys.get(name)
            if field is None:
                item[name] = None
            elif field == "image":
                item[name] = self._images(images, port)
            else:
                item[name] = values[field]
        return item

    def _images(self, paths, port):
        if not paths and port.optional:
            return None
        from PIL import Image

        views = []
        for rel in list(paths)[: port.views]:
            path = self.image_root / rel
            if not path.exists():
                raise FileNotFoundError(f"missing image {path} (referenced by {self.path})")
            with Image.open(path) as im:
                views.append(image_tensor(np.asarray(im.convert("RGB")), port.size))
        h, w = port.size
        while len(views) < port.views:  # text-only records or fewer images: black views
            views.append(torch.zeros(port.channels, h, w))
        return torch.stack(views)


def _exchanges(rec, i, path):
    if not isinstance(rec, dict) or not isinstance(rec.get("conversations"), list):
        raise DatasetError(f"{path}: record {i} has no 'conversations' list")
    images = rec.get("image") or []
    images = [images] if isinstance(images, str) else list(images)
    context, out, pending = [], [], None
    for turn in rec["conversations"]:
        who, text = str(turn.get("from", "")).lower(), str(turn.get("value", ""))
        text = text.replace("<image>", "").strip()
        if who in HUMAN:
            pending = text
        elif who in GPT and pending is not None:
            prompt = "\n".join(context + [pending])
            out.append((images, prompt, text))
            context += [pending, text]
            pending = None
    return out
