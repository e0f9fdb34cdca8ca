"""The batched trainer.

One step draws ``batch_size`` random training frames, runs them through the model in one batched
pass, and takes an Adam step on ``Σ_t w_t · term_t``, the prediction MSE of dc/dt plus the
weighted regularizers: the terms, their weights' config keys and their gradients are declared
once, in :mod:`metab_opt.problem.losses` (:data:`~metab_opt.problem.losses.LOSS_TERMS`).

Parameter groups: log_k -> learning_rate_k; MLP_node and the embeddings -> learning_rate_node
(the embeddings -> learning_rate_embedding when it is set); MLP_sub -> learning_rate_sub; anything
else -> learning_rate_start.

Two options reshape a run without changing the default one (docs/joint.md):

- ``time_step`` T > 1: each sample is a window of T + 1 consecutive training frames; the model
  rolls the first forward by T Euler steps of ``delta_t`` and the loss's residual is
  ``r = (ĉ_{t+T} - c_{t+T}) / (T·delta_t)`` (B, N), a derivative's units as at T = 1, where
  ``r = dc/dt_model(c_t) - y_t``. The regularizers read the first step's outputs. Autograd only.
- ``homeostasis_phase`` f > 0: the last ``round(f·n_steps)`` steps start a second phase with
  MLP_node's L1 off, learning_rate_k and learning_rate_sub times ``homeostasis_lr_factor`` and a
  fresh optimizer (:func:`homeostasis_config`): the first phase finds k with MLP_node held
  small, the second lets MLP_node grow to the homeostasis while k and MLP_sub stay put.

Nothing inside the step loop syncs the host with the device except at report points (on the
CPU the non-finite check runs every step, where it costs nothing).

The step (:func:`_make_step`) takes one of three paths, all the same update: on a GPU, one
autograd step captured as a CUDA graph and replayed (:class:`_GraphedStep`); otherwise the loss
with its hand-written gradient (:mod:`metab_opt.problem._fused`), or, for a model that path does not
cover (a one-layer MLP), autograd. Both eager paths use :class:`GroupAdam`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from metab_opt.config import Config
from metab_opt.problem import losses
from metab_opt.problem import metrics as M
from metab_opt.problem._fused import FusedLoss, fused_supported
from metab_opt.problem.losses import LossInputs
from metab_opt.problem.model import MetabolismGNN, Product, build_graph
from metab_opt.problem.simulation import Dataset

__all__ = [
    "TERMS",
    "Report",
    "TrainResult",
    "TrainingDiverged",
    "build_model",
    "cpu_threads",
    "homeostasis_config",
    "param_groups",
    "select_device",
    "term_weights",
    "train",
]

# The loss terms' names, in the order of every term vector (losses.LOSS_TERMS).
TERMS = losses.TERM_NAMES


class TrainingDiverged(RuntimeError):
    """The loss became non-finite; ``step`` and ``term`` say where."""

    def __init__(self, step: int, term: str) -> None:
        super().__init__(f"non-finite loss at step {step} (term: {term})")
        self.step = step
        self.term = term


@dataclass(frozen=True)
class Report:
    """An intermediate report: the mean of each term since the last one and the current R²."""

    step: int
    n_steps: int
    loss: float
    regul: float
    terms: dict[str, float]
    r2: float
    seconds: float


@dataclass
class TrainResult:
    model: MetabolismGNN
    steps: int
    n_steps: int
    seconds: float
    device: str
    history_steps: np.ndarray
    history: dict[str, np.ndarray]
    reports: list[Report] = field(default_factory=list)


def select_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available here (use auto or cpu)")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise ValueError(f"--device: expected auto, cpu or cuda, got {name!r}")
    return torch.device(name)


def build_model(ds: Dataset, cfg: Config, device: torch.device | str = "cpu", *,
                product: Product | Literal["auto"] = "auto") -> MetabolismGNN:
    """A fresh model of the dataset's network on ``device``.

    ``product`` (dense, sparse or auto; ``MetabolismGNN``): auto is the size rule of
    :func:`~metab_opt.problem.model.choose_product` on the CPU, and dense on a GPU, where the
    GEMMs stay cheap at genome scale and the CUDA-graph step was validated with them.
    """
    if product == "auto" and torch.device(device).type != "cpu":
        product = "dense"
    graph = build_graph(ds.S, ds.substrate_power)
    model = MetabolismGNN(graph, cfg.graph_model, log_k_center=cfg.simulation.log_k_center,
                          seed=cfg.training.seed, sub_grid_max=float(ds.x.max()),
                          sub_grid_points=cfg.training.sub_diff_grid_points, product=product)
    return model.to(device)


def param_groups(model: MetabolismGNN, cfg: Config) -> list[dict[str, Any]]:
    t = cfg.training
    k = [model.log_k]
    own_emb = t.learning_rate_embedding > 0.0
    node = list(model.mlp_node.parameters()) + ([] if own_emb else [model.embedding])
    sub = list(model.mlp_sub.parameters())
    taken = {id(p) for p in k + node + sub + [model.embedding]}
    rest = [p for p in model.parameters() if id(p) not in taken]
    groups = [
        {"params": k, "lr": t.learning_rate_k, "name": "k"},
        {"params": node, "lr": t.learning_rate_node, "name": "node"},
        {"params": sub, "lr": t.learning_rate_sub, "name": "sub"},
    ]
    if own_emb:
        groups.insert(2, {"params": [model.embedding], "lr": t.learning_rate_embedding,
                          "name": "embedding"})
    if rest:
        groups.append({"params": rest, "lr": t.learning_rate_start, "name": "rest"})
    return groups


class GroupAdam:
    """Adam (Kingma & Ba, torch.optim.Adam's defaults) over parameter groups, on flat buffers.

    Same update as ``torch.optim.Adam(groups)``, bit for bit on the CPU. At construction the
    parameters move into one flat buffer, group after group (``p.data`` becomes a view of it),
    and their gradients into another (``p.grad`` is a view that autograd accumulates into). A
    step is then a handful of whole-buffer ops and one ``addcdiv_`` per group, where the
    library optimizer runs each op once per tensor: on this model's 14 small tensors that
    bookkeeping was ~0.6 ms of a ~3.5 ms CPU step.

    ``zero_grad`` zeroes the gradient buffer (the views stay). A parameter whose ``grad`` was
    set elsewhere is copied into its slot; one whose ``grad`` is None is left alone for the
    step, as torch's Adam does (that step then runs tensor by tensor).
    """

    def __init__(self, groups: list[dict[str, Any]], *, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        self.params: list[Tensor] = [p for g in groups for p in g["params"]]
        self.lrs: list[float] = [float(g["lr"]) for g in groups for _ in g["params"]]
        self.b1, self.b2 = betas
        self.eps = eps
        self.t = 0  # steps taken
        self._counts = [0] * len(self.params)  # steps each tensor took part in
        first = self.params[0]
        if any(p.dtype != first.dtype or p.device != first.device for p in self.params):
            raise ValueError("GroupAdam: every parameter must have the same dtype and device")
        # Each tensor starts on a 64-byte boundary, like a fresh allocation: MKL's results
        # depend on the alignment of its operands, and the bitwise match with torch's Adam (and
        # with runs before this optimizer) needs the same paths. The padding stays 0 (its
        # gradient is 0, so its update is 0 / (0 + eps)).
        align = max(1, 64 // first.element_size())
        padded = [-(-p.numel() // align) * align for p in self.params]
        ends = list(itertools.accumulate(padded))
        offsets = [end - size for end, size in zip(ends, padded)]
        self.flat = first.new_zeros(ends[-1])
        self.flat_grad = torch.zeros_like(self.flat)
        self.m_flat = torch.zeros_like(self.flat)
        self.v_flat = torch.zeros_like(self.flat)

        def views(buf: Tensor) -> list[Tensor]:
            return [buf[o:o + p.numel()].view_as(p) for o, p in zip(offsets, self.params)]

        self.m, self.v, self._grads = views(self.m_flat), views(self.v_flat), views(self.flat_grad)
        with torch.no_grad():
            for p, view, g in zip(self.params, views(self.flat), self._grads):
                view.copy_(p)
                p.data = view
                p.grad = g
        # Runs of equal learning rate (the groups, padding included): one addcdiv_ each.
        self._runs: list[tuple[int, int, float]] = []
        for o, end, lr in zip(offsets, ends, self.lrs):
            if self._runs and self._runs[-1][2] == lr:
                self._runs[-1] = (self._runs[-1][0], end, lr)
            else:
                self._runs.append((o, end, lr))

    def zero_grad(self) -> None:
        self.flat_grad.zero_()
        for p, g in zip(self.params, self._grads):
            p.grad = g

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        live = []
        for i, (p, g) in enumerate(zip(self.params, self._grads)):
            if p.grad is None:
                continue
            if p.grad is not g:  # assigned elsewhere: take it into the buffer
                g.copy_(p.grad)
                p.grad = g
            live.append(i)
        for i in live:
            self._counts[i] += 1
        if len(live) < len(self.params) or self._counts.count(self.t) < len(self._counts):
            # like torch.optim.Adam: no gradient, no update, and each tensor counts its own
            # steps (for the bias corrections) from then on
            self._step_tensors(live)
            return
        bc1 = 1.0 - self.b1**self.t
        bc2 = 1.0 - self.b2**self.t
        g = self.flat_grad
        self.m_flat.lerp_(g, 1.0 - self.b1)
        self.v_flat.mul_(self.b2).addcmul_(g, g, value=1.0 - self.b2)
        denom = (self.v_flat.sqrt() / math.sqrt(bc2)).add_(self.eps)
        for start, end, lr in self._runs:
            self.flat[start:end].addcdiv_(self.m_flat[start:end], denom[start:end],
                                          value=-lr / bc1)

    def _step_tensors(self, live: list[int]) -> None:
        if not live:
            return
        params = [self.params[i].data for i in live]
        m = [self.m[i] for i in live]
        v = [self.v[i] for i in live]
        grads = [self._grads[i] for i in live]
        torch._foreach_lerp_(m, grads, 1.0 - self.b1)
        torch._foreach_mul_(v, self.b2)
        torch._foreach_addcmul_(v, grads, grads, 1.0 - self.b2)
        counts = [self._counts[i] for i in live]
        denom = torch._foreach_sqrt(v)
        torch._foreach_div_(denom, [math.sqrt(1.0 - self.b2**n) for n in counts])
        torch._foreach_add_(denom, self.eps)
        torch._foreach_addcdiv_(params, m, denom, [-self.lrs[i] / (1.0 - self.b1**n)
                                                   for i, n in zip(live, counts)])


def _r2_now(model: MetabolismGNN, log_k_true: np.ndarray) -> float:
    return M.rate_constant_metrics(log_k_true, model.log_k.detach().cpu().double().numpy())[
        "rate_constants_R2"]


def term_weights(cfg: Config, device: torch.device | str = "cpu") -> Tensor:
    """The weight of each of :data:`TERMS` in the total loss (1 for the prediction loss)."""
    return torch.tensor(losses.weights(cfg.training), device=device)


def homeostasis_config(cfg: Config) -> Config:
    """The config of a run's second phase (``training.homeostasis_phase``): MLP_node's L1 off,
    learning_rate_k and learning_rate_sub times ``homeostasis_lr_factor``."""
    t = cfg.training
    f = t.homeostasis_lr_factor
    return dataclasses.replace(cfg, training=dataclasses.replace(
        t, coeff_MLP_node_L1=0.0, learning_rate_k=t.learning_rate_k * f,
        learning_rate_sub=t.learning_rate_sub * f))


def _step_terms(model: MetabolismGNN, c: Tensor, y: Tensor, cfg: Config,
                k_center: float, target: Tensor | None = None) -> Tensor:
    """The loss terms of one batch, unweighted, as a (len(TERMS),) tensor, through autograd's
    ops (each term's ``value``); ``k_center`` is the centre of the k_center term.

    With ``target`` (B, N), the frames ``time_step`` = T frames after ``c``, the residual is the
    T-step Euler roll-out's (module docstring); else ``dc/dt - y``."""
    parts = model.forward_parts(c)
    if target is None:
        r = parts.dcdt - y
    else:
        steps, dt = cfg.training.time_step, cfg.simulation.delta_t
        c_t = c + dt * parts.dcdt
        for _ in range(steps - 1):
            c_t = c_t + dt * model(c_t)
        r = (c_t - target) / (steps * dt)
    x = LossInputs(r=r, node_out=parts.node_out, log_k=model.log_k,
                   grid=parts.grid_sub, norm=parts.norm_point, training=cfg.training,
                   log_k_center=k_center)
    return losses.evaluate(x, losses.weights(cfg.training))


def train(ds: Dataset, cfg: Config, *, device: str | torch.device = "auto",
          on_report: Callable[[Report], None] | None = None, progress: bool = False,
          max_steps: int | None = None, history_points: int = 400,
          threads: int | None = 1, cuda_graph: bool = True, fused: bool = True) -> TrainResult:
    """Train a fresh model on the dataset with the config's training section.

    ``on_report`` is called every ``report_every`` steps (20 reports per run by default); it may
    raise (e.g. ``optuna.TrialPruned``) to stop the run. A non-finite loss raises
    :class:`TrainingDiverged`.

    On the CPU the run uses ``threads`` torch threads (restored afterwards; None keeps torch's
    setting). One is the default: this model's tensors are small, and on a 2-core machine a
    second OpenMP thread spinning against any other work made steps up to 5x slower.

    On a GPU the step is replayed from a CUDA graph (``cuda_graph``, see :class:`_GraphedStep`);
    ``cuda_graph=False`` runs it eagerly, as on the CPU. An eager step takes the hand-written
    gradient of :mod:`metab_opt.problem._fused` (``fused``) where it covers the model, else
    autograd.
    """
    dev = select_device(device) if isinstance(device, str) else device
    with cpu_threads(threads if dev.type == "cpu" else None):
        return _train(ds, cfg, dev, on_report, progress, max_steps, history_points, cuda_graph,
                      fused)


@contextlib.contextmanager
def cpu_threads(n: int | None) -> Iterator[None]:
    """Use ``n`` torch CPU threads inside the block (None: leave torch's setting)."""
    previous = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class _Step:
    """One training step: draw ``batch_size`` frames, take an Adam step on them, and return the
    unweighted terms (detached, on the device). What the eager and graphed steps share."""

    graphed = False
    fused = False

    def __init__(self, model: MetabolismGNN, cfg: Config, x: Tensor, y: Tensor,
                 gen: torch.Generator) -> None:
        self.model, self.cfg, self.x, self.y, self.gen = model, cfg, x, y, gen
        self.coeffs = term_weights(cfg, x.device)
        self.k_center = cfg.simulation.log_k_center
        self.time_step = cfg.training.time_step
        # A sample is the window idx .. idx + T: its first frame is drawn among n_frames - T
        # (all of them at T = 1, where the target is y at the frame itself).
        self.n_frames = x.shape[0] - (self.time_step if self.time_step > 1 else 0)
        if self.n_frames < 1:
            raise ValueError(f"training.time_step {self.time_step} needs more than "
                             f"{self.time_step} training frames (have {x.shape[0]})")
        self.batch = cfg.training.batch_size

    def _terms(self, idx: Tensor) -> Tensor:
        target = self.x[idx + self.time_step] if self.time_step > 1 else None
        return _step_terms(self.model, self.x[idx], self.y[idx], self.cfg, self.k_center,
                           target)


class _EagerStep(_Step):
    """The step op by op: with the hand-written gradient of :mod:`metab_opt.problem._fused` when it
    covers the model (``fused``), else with autograd."""

    def __init__(self, model: MetabolismGNN, cfg: Config, x: Tensor, y: Tensor,
                 gen: torch.Generator, fused: bool = True) -> None:
        super().__init__(model, cfg, x, y, gen)
        self.opt = GroupAdam(param_groups(model, cfg))
        self.check = x.device.type == "cpu"  # a per-step sync costs nothing on the CPU
        # The hand-written gradient covers the one-step loss only.
        fuse = fused and fused_supported(model) and self.time_step == 1
        self.loss = FusedLoss(model, cfg) if fuse else None
        self.fused = self.loss is not None

    def __call__(self, step: int) -> Tensor:
        idx = torch.randint(self.n_frames, (self.batch,), generator=self.gen,
                            device=self.x.device)
        if self.loss is not None:
            terms = self.loss.forward(self.x[idx], self.y[idx])
        else:
            terms = self._terms(idx)
        total = (terms * self.coeffs).sum()
        if self.check and not math.isfinite(float(total.detach())):
            raise TrainingDiverged(step, _bad_term(terms))
        if self.loss is not None:
            self.loss.backward()  # overwrites every gradient: no zero_grad needed
        else:
            self.opt.zero_grad()
            total.backward()
        self.opt.step()
        return terms.detach()


class _GraphedStep(_Step):
    """The same step replayed from a CUDA graph: one launch instead of ~200 per step.

    On a GPU this model's step is bound by kernel launches and Python (an H100 ran ~255 steps/s
    eagerly). The batch indices are drawn into a static tensor before each replay from the same
    generator as the eager step; the first ``warmup`` steps run eagerly on a side stream (as
    CUDA graph capture requires) and count as ordinary steps. The optimizer is
    ``torch.optim.Adam(capturable=True)``, whose step count lives on the device: the same update
    as :class:`GroupAdam`, with its bias corrections computed on the GPU inside the graph.
    """

    graphed = True
    warmup = 3

    def __init__(self, model: MetabolismGNN, cfg: Config, x: Tensor, y: Tensor,
                 gen: torch.Generator) -> None:
        super().__init__(model, cfg, x, y, gen)
        self.opt = torch.optim.Adam(param_groups(model, cfg), capturable=True, foreach=True)
        self.idx = torch.zeros(self.batch, dtype=torch.long, device=x.device)
        self.terms = torch.zeros(len(TERMS), device=x.device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.stream = torch.cuda.Stream(x.device)

    def _body(self) -> None:
        terms = self._terms(self.idx)
        (terms * self.coeffs).sum().backward()
        self.opt.step()
        self.terms.copy_(terms.detach())

    def __call__(self, step: int) -> Tensor:
        torch.randint(self.n_frames, self.idx.shape, generator=self.gen, device=self.idx.device,
                      out=self.idx)
        if self.graph is not None:
            self.graph.replay()
            return self.terms.clone()
        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream):
            self.opt.zero_grad(set_to_none=True)
            self._body()
        torch.cuda.current_stream().wait_stream(self.stream)
        if step >= self.warmup:
            # Capture (the captured work does not run): the next replays are the steps.
            self.opt.zero_grad(set_to_none=True)
            graph = torch.cuda.CUDAGraph()
            # thread_local: other threads' trials (study --n-jobs) may use the GPU while this
            # one captures; the default ("global") would make their calls fail.
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                self._body()
            self.graph = graph
        return self.terms.clone()


def _make_step(model: MetabolismGNN, cfg: Config, x: Tensor, y: Tensor, gen: torch.Generator,
               cuda_graph: bool, fused: bool = True) -> _Step:
    if cuda_graph and x.device.type == "cuda":
        return _GraphedStep(model, cfg, x, y, gen)
    return _EagerStep(model, cfg, x, y, gen, fused)


def _train(ds: Dataset, cfg: Config, dev: torch.device,
           on_report: Callable[[Report], None] | None, progress: bool, max_steps: int | None,
           history_points: int, cuda_graph: bool, fused: bool) -> TrainResult:
    t = cfg.training
    torch.manual_seed(t.seed)  # belt and braces: every draw below uses its own generator
    model = build_model(ds, cfg, dev)
    x = torch.as_tensor(ds.x, dtype=torch.float32, device=dev)
    y = torch.as_tensor(ds.y, dtype=torch.float32, device=dev)
    n_frames = x.shape[0]
    n_steps = t.n_steps(n_frames) if max_steps is None else min(max_steps, t.n_steps(n_frames))
    report_every = t.report_every or max(1, math.ceil(n_steps / 20))
    hist_every = max(1, n_steps // history_points)
    coeffs = term_weights(cfg, dev)
    gen = torch.Generator(device=dev).manual_seed(t.seed)
    take_step = _make_step(model, cfg, x, y, gen, cuda_graph, fused)
    # The homeostasis phase's first step (never, at its default 0), and the term weights of each
    # stored history row (a row before that step: phase 1's).
    phase_at = n_steps + 1 - round(t.homeostasis_phase * n_steps)
    coeffs_hist = coeffs
    hist = torch.zeros(n_steps // hist_every + 1, len(TERMS), device=dev)
    hist_acc = torch.zeros(len(TERMS), device=dev)
    rep_acc = torch.zeros(len(TERMS), device=dev)
    reports: list[Report] = []
    bar = None
    bar_every = max(1, n_steps // 200)
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_steps, unit="step", dynamic_ncols=True, leave=False)
    t0 = time.perf_counter()
    rep_start = 0
    try:
        for step in range(1, n_steps + 1):
            if step == phase_at:  # never, without the phase (phase_at = n_steps + 1)
                cfg2 = homeostasis_config(cfg)
                take_step = _make_step(model, cfg2, x, y, gen, cuda_graph, fused)
                coeffs = term_weights(cfg2, dev)
            detached = take_step(step)
            hist_acc += detached
            rep_acc += detached
            if step % hist_every == 0:
                hist[step // hist_every - 1] = hist_acc / hist_every
                hist_acc.zero_()
            if bar is not None and step % bar_every == 0:
                bar.update(step - bar.n)  # a step count only: no device sync
            if step % report_every == 0 or step == n_steps:
                means = (rep_acc / (step - rep_start)).tolist()
                rep_acc.zero_()
                rep_start = step
                if not all(math.isfinite(v) for v in means):
                    raise TrainingDiverged(step, TERMS[next(i for i, v in enumerate(means)
                                                            if not math.isfinite(v))])
                r2 = _r2_now(model, ds.log_k_true)
                regul = float(sum(c * v for c, v in zip(coeffs.tolist()[1:], means[1:])))
                rep = Report(step=step, n_steps=n_steps, loss=means[0], regul=regul,
                             terms=dict(zip(TERMS, means)), r2=r2,
                             seconds=time.perf_counter() - t0)
                reports.append(rep)
                if bar is not None:
                    bar.update(step - bar.n)
                    bar.set_postfix(loss=f"{means[0]:.3g}", R2=f"{r2:.3f}")
                if on_report is not None:
                    on_report(rep)
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - t0
    n_hist = n_steps // hist_every
    h = hist[:n_hist].cpu().numpy()
    history = {name: h[:, i] for i, name in enumerate(TERMS)}
    rows = (np.arange(n_hist) + 1) * hist_every
    w = np.where((rows < phase_at)[:, None], coeffs_hist.cpu().numpy(), coeffs.cpu().numpy())
    history["regul_total"] = (h[:, 1:] * w[:, 1:]).sum(axis=1)
    return TrainResult(model=model, steps=n_steps, n_steps=n_steps, seconds=seconds,
                       device=str(dev), history_steps=rows,
                       history=history, reports=reports)


def _bad_term(terms: Tensor) -> str:
    finite = torch.isfinite(terms.detach()).tolist()
    return next((name for name, ok in zip(TERMS, finite) if not ok), "loss")
