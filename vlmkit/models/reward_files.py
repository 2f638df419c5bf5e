"""The files a reward model adds to a VLM checkpoint (composite or native), known to the layers below rlhf so that
`vlmkit merge` keeps a reward model one."""

HEAD_FILE = "score_head.safetensors"  # the scalar head: weight (1, H), bias (1,)
REWARD_CONFIG_FILE = "reward_model.json"  # what the head reads (kind, hidden size)
