"""Generation prompts: left padding (the prompts themselves are checked through eval and rollouts)."""

from vlmkit.data.prompts import left_padded_batch


def test_left_padded_batch():
    ids, mask = left_padded_batch([[5, 6, 7], [8]], pad_token_id=0, device="cpu")
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
