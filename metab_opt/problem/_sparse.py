"""The sparse way of the model's two graph products, and the rule that picks it.

:class:`~metab_opt.problem.model.MetabolismGNN` sums over its graph with two fixed matrices, M
(Q, R) (substrate pairs to reactions) and S (N, R) (the stoichiometry), and the hand-written
gradient with their transposes. Held dense, each product costs B·R·(Q + N) multiply-adds and
reads R·(Q + N) floats, whatever the sparsity: nothing on PDE_M1's 100 x 256 networks, most of
the step on a genome-scale one (iJO1366: N = 1,805, R = 2,862, ~2.7 ms per dense product
against ~50 µs as CSR with one CPU thread). Here the matrices are CSR, multiplied by MKL's
sparse-times-dense kernel: B·nnz per product.

A matrix is kept as its three CSR tensors (crow indices, column indices, values), ordinary
buffers of the model that ``.to()``, ``.double()`` and ``deepcopy`` treat like any other (a CSR
tensor as a buffer cannot be deep-copied), and wrapped as a CSR tensor per product
(:func:`csr_tensor`, a few µs).
"""

from __future__ import annotations

import warnings
from typing import Literal

import torch
from torch import Tensor

__all__ = ["PRODUCTS", "SPARSE_MIN_ENTRIES", "Product", "choose_product", "csr_mm", "csr_parts",
           "csr_tensor", "sparse_mm"]

Product = Literal["dense", "sparse"]
PRODUCTS: tuple[Product, ...] = ("dense", "sparse")

# From this many entries in the dense M and S^T together, R·(Q + N), the products go sparse.
# Measured: the fused training step (batch 8, one thread, a CPU shared with two other jobs) with
# each product, timed in alternating rounds, on PDE_M1 networks of 2.5 reactions per metabolite,
# as sparse/dense step time: 1.15 at 4.9e4 entries (rank50: 2.0 against 2.3 ms), ~1.0 at 1.0e5
# (rank70's 100 x 512) and 1.0-1.1 at 1.9e5, 0.76-0.90 at 3.1e5-4.4e5, 0.73 at 1.8e6, 0.69 at
# 3.1e6; the two are within noise up to ~2e5, so the rule stays dense there. Every PDE_M1 config
# of the package (at most 1.0e5, rank70) keeps the dense path and its bit-for-bit results;
# e_coli_core (1.6e4) too; iJO1366 (1.0e7) goes sparse.
SPARSE_MIN_ENTRIES = 300_000


def choose_product(n_pairs: int, n_metabolites: int, n_reactions: int) -> Product:
    """``sparse`` when the dense M (Q, R) and S^T (R, N) would hold at least
    :data:`SPARSE_MIN_ENTRIES` entries together, else ``dense``: the CPU rule.

    A dense product costs B·R·(Q + N) and a sparse one B·nnz plus a fixed ~10-20 µs per call
    (wrapping the CSR tensor, MKL's handle, two transposes of the (B, ·) operands), four calls a
    step. On a GPU the dense GEMMs stay cheap well beyond that, and are what its CUDA graphs
    were checked with: ``training.build_model`` keeps them there.
    """
    entries = n_reactions * (n_pairs + n_metabolites)
    return "sparse" if entries >= SPARSE_MIN_ENTRIES else "dense"


def csr_parts(rows: Tensor, cols: Tensor, values: Tensor,
              shape: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
    """The (crow indices, column indices, values) of the CSR matrix with these COO entries
    (duplicates summed, columns sorted within each row)."""
    coo = torch.sparse_coo_tensor(torch.stack([rows, cols]), values, shape,
                                  check_invariants=True).coalesce()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        csr = coo.to_sparse_csr()
    return csr.crow_indices(), csr.col_indices(), csr.values()


def csr_tensor(crow: Tensor, col: Tensor, values: Tensor, shape: tuple[int, int]) -> Tensor:
    """The CSR tensor of :func:`csr_parts`' three tensors (no copy, no invariant check: the
    parts come from :func:`csr_parts`)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        return torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)


def csr_mm(a: Tensor, x: Tensor) -> Tensor:
    """``x A^T`` for a CSR matrix A (m, k) and a dense batch x (B, k): a contiguous (B, m).

    It runs as ``A x^T`` (MKL's kernel takes the dense operand row-major, (k, B); a strided one
    is copied anyway) and is transposed back: two copies of B·k and B·m floats, small beside
    the product on the graphs this path is for."""
    return torch.mm(a, x.t().contiguous()).t().contiguous()


class _CsrProduct(torch.autograd.Function):
    """:func:`csr_mm` as an autograd node: ``x A^T``, backward ``g A``, with A^T given as its
    own CSR matrix (transposing a CSR tensor gives CSC, which MKL's kernel does not take)."""

    @staticmethod
    def forward(ctx, x: Tensor, a: Tensor, a_t: Tensor) -> Tensor:  # type: ignore[override]
        ctx.a_t = a_t
        return csr_mm(a, x)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        return csr_mm(ctx.a_t, grad), None, None


def sparse_mm(x: Tensor, a: Tensor, a_t: Tensor) -> Tensor:
    """``x A^T`` (B, m) for a CSR A (m, k), differentiable in x; ``a_t`` is A^T as CSR (k, m)."""
    if torch.is_grad_enabled() and x.requires_grad:
        return _CsrProduct.apply(x, a, a_t)
    return csr_mm(a, x)
