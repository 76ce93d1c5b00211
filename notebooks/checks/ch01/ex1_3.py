"""Exercise 1.3: nn.Embedding equals nn.Linear on one-hot vectors: the two layers the answer built, tried on ids of
the check's own."""

import torch
from otter.test_files import test_case
from torch import nn

from checks._guard import answer, require

OK_FORMAT = False
name = "ex1_3"
points = 1


@test_case(points=1)
def ex1_3(env):
    for kwargs in [{"vocab_size": 500, "emb_dim": 4, "seed": 3}, {"vocab_size": 1000, "emb_dim": 8, "seed": 0}]:
        vocab_size, emb_dim, seed = kwargs.get("vocab_size", 50257), kwargs.get("emb_dim", 16), kwargs.get("seed", 123)
        call = f"exercise_1_3({', '.join(f'{k}={v}' for k, v in kwargs.items())})"
        layers = answer(env, "exercise_1_3", **kwargs, returns=tuple,
                        expects="a tuple (embedding, linear): the two layers")
        require(len(layers) == 2, f"{call} returned {len(layers)} things; return (embedding, linear).")
        embedding, linear = layers
        require(isinstance(embedding, nn.Embedding) and tuple(embedding.weight.shape) == (vocab_size, emb_dim),
                f"{call}[0] should be an nn.Embedding({vocab_size}, {emb_dim}), got {embedding!r}.")
        require(isinstance(linear, nn.Linear) and linear.bias is None
                and (linear.in_features, linear.out_features) == (vocab_size, emb_dim),
                f"{call}[1] should be an nn.Linear({vocab_size}, {emb_dim}, bias=False), got {linear!r}.")
        with torch.random.fork_rng(devices=[]):  # the notebook's random state stays as it was
            torch.manual_seed(seed)
            expected = nn.Embedding(vocab_size, emb_dim).weight
        require(torch.equal(embedding.weight.detach().cpu(), expected.detach()),
                f"{call}[0] has other weights than nn.Embedding({vocab_size}, {emb_dim}) made right after "
                f"torch.manual_seed({seed}); make the embedding first, after seeding.")
        ids = torch.randint(0, vocab_size, (3, 5), generator=torch.Generator().manual_seed(7))  # (3, 5)
        with torch.no_grad():
            one_hot = nn.functional.one_hot(ids, vocab_size).to(linear.weight.dtype)  # (3, 5, V)
            diff = (linear.cpu()(one_hot) - embedding.cpu()(ids)).abs().max().item()
        require(diff < 1e-6,
                f"{call}: on token ids of the check's own, the linear layer on one-hot vectors and the embedding "
                f"differ by up to {diff:.3g}. Hint: nn.Linear stores its weight as (out_features, in_features) = "
                f"(emb_dim, vocab_size); copy the embedding's weight transposed into it (under torch.no_grad()).")
