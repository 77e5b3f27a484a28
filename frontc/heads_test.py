"""heads: the trailing dims of a Reshape that split a projection's output into heads."""
from frontc.heads import LEAD, split_dims


def test_split_dims_rules():
    assert split_dims([1, 8, None, 16], 64) == (4, 16)               # HF: view(b, t, -1, hd)
    assert split_dims([LEAD, LEAD, 3, 4, None], 192) == (3, 4, 16)   # timm legacy: d // heads
    assert split_dims([None, 17, 3, 4, 16], 192) == (3, 4, 16)       # dynamo: static tokens
    assert split_dims([1, 8, 4, 16], 64) == (4, 16)
    assert split_dims([1, 8, None, 16], 16) == (1, 16)               # one key/value head
    assert split_dims([1, 12, None, 32], 384) == (12, 32)            # 12 tokens, 12 heads
    assert split_dims([1, 8, 192], 192) is None                      # no split at all
    assert split_dims([LEAD, LEAD, None], 64) is None
