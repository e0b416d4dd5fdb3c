"""Processing pipelines: what turns raw values into block tensors and back (normalization,
tokenizers, VLM processors), as picklable steps that run the same in DataLoader workers, in
`Policy`, in the server and in front of an export, and that are saved beside every checkpoint as
data (base.py: the contract; one module per step kind)."""
