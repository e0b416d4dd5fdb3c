"""Pretrained image encoders (`encoder.<name>`), each behind an optional extra. The small
from-scratch encoders (`encoder.image`, `encoder.text`, `encoder.keypoints`) live in blocks/encoders.py."""
