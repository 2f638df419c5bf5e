"""The whole chain in one command: `vlmkit pipeline --config recipes/configs/pipeline_digits.yaml`."""
