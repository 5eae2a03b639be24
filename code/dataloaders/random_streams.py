"""Every random stream of a run, derived from its one --seed so that no two streams coincide.

Seeding two generators with the same integer replays the same bits: torch's global generator and a
torch.Generator seeded with --seed draw identical numbers (the diffusion's t/noise would repeat the draws that
initialised θ), numpy's legacy global MT19937 shares torch's seeding, and `default_rng([seed, a, b])` of two
streams collides whenever their (a, b) do. Here each stream has its own spawn key in one numpy SeedSequence
tree: seeds of distinct (stream, key) are independent by construction, and a stream's seed depends on
nothing but (seed, stream, key), so resuming, several workers and several processes draw the same values.
"""
import numpy as np

STREAMS = ("torch", "numpy", "python", "torch_rank", "loader", "sampler", "augmentation", "diffusion")


def _sequence(seed, stream, key):
    if stream not in STREAMS:
        raise KeyError(f"unknown random stream {stream!r}; add it to STREAMS")
    return np.random.SeedSequence(int(seed), spawn_key=(STREAMS.index(stream), *(int(k) for k in key)))


def stream_seed(seed, stream, *key):
    """An integer in [0, 2**63) for torch.manual_seed / random.seed / np.random.seed (legacy: < 2**32)."""
    state = _sequence(seed, stream, key).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def stream_rng(seed, stream, *key):
    """A numpy Generator of its own on this stream."""
    return np.random.default_rng(_sequence(seed, stream, key))
