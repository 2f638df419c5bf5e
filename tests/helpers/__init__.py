"""Test helpers shared across the test folders: tiny training runs, a recording Hub, distributed launches."""
