"""A Hugging Face VLM's processor for image-text use lives in graphvla/processors/hf_processor.py
(the VLM's processor step loads it from its saved folder without the blocks); kept under this name
for the blocks and the export."""
from ...processors.hf_processor import image_text_processor, load_processor, without_video  # noqa: F401
