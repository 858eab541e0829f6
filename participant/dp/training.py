"""DP-SGD with exact per-sample clipping in one backward pass.

DP-SGD (Abadi et al. 2016, "Deep Learning with Differential Privacy") clips
each example's gradient to ``max_grad_norm`` before summing, then adds
Gaussian noise. Materialising per-sample gradients (Opacus's default hooks)
costs B copies of every weight matrix; here it was 39x slower than plain
training. For a Linear layer with input ``a_i`` and output gradient ``g_i``
the per-sample weight gradient is the outer product ``g_i a_i^T``, so

    ||grad_i W||_F = ||a_i|| * ||g_i||,   ||grad_i b|| = ||g_i||

(Goodfellow 2015, "Efficient per-example gradient computations"; the same
identity underlies Opacus's ghost clipping, Li et al. 2022). With clip
factors ``c_i = min(1, C / (||grad_i|| + 1e-6))`` (Opacus's formula) the
clipped sum is ``(c * G)^T A`` for the weight and ``sum_i c_i g_i`` for the
bias: one matmul per layer, the cost of an ordinary weight gradient.

So a step is: forward with hooks recording each Linear's input ``A`` and
output ``Z``; ONE ``autograd.grad`` of the summed per-sample losses with
respect to the ``Z`` (no weight gradients are computed by autograd); norms;
then ``p.grad = (clipped sum + noise) / expected batch``, Opacus's
``DPOptimizerFastGradientClipping`` arithmetic (std = noise_multiplier *
max_grad_norm on the clipped sum, then division by the expected batch size),
with the division applied to each term: the noise is drawn with the divided
std and the clipped sum is added onto it by one in-place ``addmm_``. The
Gaussian draws cost more than the rest of the step's extra work, so
``participant.dp.step_noise`` draws each step's noise on a helper thread
beside the training arithmetic (fresh per step, complete before that step's
update). Every draw comes from ``participant.dp.randomness``: generators with
a full state of OS entropy (no searchable seed), batches from Opacus's
Poisson ``UniformWithReplacementSampler``; ``secure_mode`` (Opacus's name)
draws the batches and the noise from an AES-256-CTR CSPRNG instead.

Fingerprint inputs are ~98% zeros. When ``batch_inputs`` returns CSR rows
(``participant.dp.sparse_rows.SparseBatch``), the Linear layer that reads them runs on
the non-zeros only: forward ``X W^T`` and weight gradient ``X^T (c * G)``
from CSR, ``||a_i||^2`` from the stored values, and its weight is kept
column-major during training so both kernels read and write contiguous
memory. The clipping is unchanged; without noise the result equals the
dense path up to float summation order (tested with Opacus and against the
dense path step for step). Under plain SGD, the noise of that weight's
columns a batch does not read is owed and drawn when one next does
(``participant.dp.lazy_noise``): the same distribution, a third of the draws
at batch 32.

The path is exact DP-SGD for networks whose parameters all live in
``nn.Linear`` layers applied once per forward to 2-D inputs, combined with
parameter-free modules (ReLU, Dropout, ...). Anything else is refused
(fail closed) rather than silently mis-clipped.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import torch
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from torch import nn

from participant.dp.lazy_noise import LazyColumnNoise, plain_sgd_group
from participant.dp.randomness import CsprngStream, DPRandom
from participant.dp.sparse_rows import SparseBatch, column_major, sparse_input
from participant.dp.step_noise import StepNoise
from protocols.errors import ConfigError

__all__ = ["ClippedGradients", "DPTrainingResult", "clip_and_sum", "dp_train", "linear_layers"]

# Per-column noise (participant.dp.lazy_noise) is used when the first batch reads at
# most this fraction of a CSR-read weight's columns. Measured on Lipophilicity,
# 2048-256, 2 cores: 0.84-0.92x the epoch at batch 32 (33% read), even at 64 (47%),
# 1.05-1.13x at 128-256 (65-80%), where its per-step bookkeeping outweighs the
# draws it saves.
LAZY_MAX_READ_FRACTION = 0.5

# Per-sample losses from model outputs for one batch: (pred, batch_index) -> (B,)
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# A batch of model inputs: dense (B, d), or CSR rows for mostly-zero fingerprints.
Inputs = torch.Tensor | SparseBatch


def linear_layers(model: nn.Module) -> list[nn.Linear]:
    """The model's Linear layers; refuses models with parameters elsewhere."""
    linears: list[nn.Linear] = []
    for name, module in model.named_modules():
        own = [p for p in module.parameters(recurse=False) if p.requires_grad]
        if isinstance(module, nn.Linear):
            if own:
                linears.append(module)
        elif own:
            raise ConfigError(
                "model", "the fast DP-SGD path supports parameters in nn.Linear layers only",
                got=f"{name or '<root>'} ({type(module).__name__})",
                expected="Linear layers plus parameter-free modules (ReLU, Dropout)",
                fix="freeze that module's parameters or use Opacus's GradSampleModule",
            )
    return linears


def _grad_buffer(p: torch.Tensor) -> torch.Tensor:
    # Reusing the gradient buffer avoids a fresh multi-MB allocation (and its page
    # faults) per layer per step, which cost as much as the arithmetic here.
    if p.grad is None or p.grad.shape != p.shape:
        p.grad = torch.empty_like(p)
    return p.grad


@dataclass(frozen=True)
class ClippedGradients:
    """Per-sample gradient norms before clipping, and the batch's summed loss."""

    norms: torch.Tensor
    loss_sum: float


class _Tape:
    """Records each Linear's input and output during one forward pass."""

    def __init__(self, linears: list[nn.Linear]) -> None:
        self.linears = linears
        self.inputs: dict[nn.Linear, Inputs] = {}
        self.outputs: dict[nn.Linear, torch.Tensor] = {}
        self._handles = [m.register_forward_hook(self._hook) for m in linears]

    def _hook(self, module: nn.Module, args: tuple[Inputs, ...], out: torch.Tensor) -> None:
        assert isinstance(module, nn.Linear)
        if module in self.outputs:
            raise ConfigError("model", "a Linear layer is applied twice in one forward pass",
                              got=repr(module), expected="each Linear used once")
        x = args[0]
        if isinstance(x, SparseBatch):
            self.inputs[module] = x
        elif x.dim() != 2:
            raise ConfigError("model", "the fast DP-SGD path needs 2-D Linear inputs",
                              got=tuple(x.shape), expected="(batch, features)")
        else:
            self.inputs[module] = x.detach()
        self.outputs[module] = out

    def close(self) -> None:
        for h in self._handles:
            h.remove()

    def forward(self, model: nn.Module, x: Inputs,
                loss_fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """Per-sample losses, recording each Linear's input and output."""
        self.inputs.clear()
        self.outputs.clear()
        return loss_fn(model(x))

    def clip(self, losses: torch.Tensor, *, max_grad_norm: float
             ) -> tuple[dict[nn.Linear, torch.Tensor], ClippedGradients]:
        """Clip-scaled output gradients ``c_i * g_i`` per used Linear, and the norms."""
        used = [m for m in self.linears if m in self.outputs]
        batch = losses.shape[0]
        if batch == 0 or not used:
            return {}, ClippedGradients(norms=torch.zeros(0), loss_sum=0.0)
        grads: tuple[torch.Tensor | None, ...] = torch.autograd.grad(
            losses.sum(), [self.outputs[m] for m in used], allow_unused=True)
        self.outputs.clear()  # free the graph before the update
        norm_sq = torch.zeros(batch, dtype=losses.dtype, device=losses.device)
        present: dict[nn.Linear, torch.Tensor] = {}
        for m, g in zip(used, grads, strict=True):
            if g is None:
                continue
            present[m] = g
            g_sq = torch.linalg.vector_norm(g, dim=1).square_()
            if m.weight.requires_grad:
                norm_sq.addcmul_(_squared_row_norms(self.inputs[m]), g_sq)
            if m.bias is not None and m.bias.requires_grad:
                norm_sq += g_sq
        norms = norm_sq.sqrt_()
        factor = (max_grad_norm / (norms + 1e-6)).clamp_(max=1.0).unsqueeze(1)
        bad = ~torch.isfinite(norms)
        if bool(bad.any()):
            # A model can overflow on chosen molecules only (inf - inf = NaN); such a row
            # would turn the whole noisy sum into NaN, a membership oracle past the noise.
            # It contributes a zero gradient instead, which is within the clipping bound.
            rows = bad.unsqueeze(1)
            factor = factor.masked_fill(rows, 0.0)
            present = {m: g.masked_fill(rows, 0.0) for m, g in present.items()}
            for m, x in list(self.inputs.items()):
                if isinstance(x, torch.Tensor):
                    self.inputs[m] = x.masked_fill(rows, 0.0)
            norms = norms.masked_fill(bad, 0.0)
        scaled = {m: g * factor for m, g in present.items()}
        loss_sum = float(losses.detach()[~bad].sum()) if bool(bad.any()) else float(
            losses.detach().sum())
        return scaled, ClippedGradients(norms=norms.detach(), loss_sum=loss_sum)


def _squared_row_norms(x: Inputs) -> torch.Tensor:
    if isinstance(x, SparseBatch):
        return x.squared_row_norms()
    # One fused reduction per row; pow(2).sum() allocated a (B, d) temporary.
    sq: torch.Tensor = torch.linalg.vector_norm(x, dim=1).square_()
    return sq


def clip_and_sum(model: nn.Module, x: Inputs, loss_fn: Callable[[torch.Tensor],
                 torch.Tensor], *, max_grad_norm: float) -> ClippedGradients:
    """Write the sum of clipped per-sample gradients into each ``p.grad``.

    ``loss_fn`` maps the model's output to per-sample losses, shape (B,).
    """
    tape = _Tape(linear_layers(model))
    try:
        with sparse_input(model):
            losses = tape.forward(model, x, loss_fn)
        scaled, result = tape.clip(losses, max_grad_norm=max_grad_norm)
        for m in tape.linears:
            gc = scaled.get(m)
            for p, is_weight in ((m.weight, True), (m.bias, False)):
                if p is None or not p.requires_grad:
                    continue
                inputs = tape.inputs.get(m)
                if gc is None:
                    p.grad = torch.zeros_like(p)
                elif not is_weight:
                    torch.sum(gc, dim=0, out=_grad_buffer(p))
                elif isinstance(inputs, SparseBatch):
                    _grad_buffer(p).copy_(inputs.transposed_matmul(gc).t())
                else:
                    assert inputs is not None
                    torch.mm(gc.t(), inputs, out=_grad_buffer(p))
    finally:
        tape.close()
    return result


@dataclass(frozen=True, kw_only=True)
class DPTrainingResult:
    """Aggregate outcome of local DP training: nothing here is per-example."""

    steps: int
    mean_loss: float
    clipped_fraction: float


def dp_train(
    model: nn.Module,
    n_examples: int,
    batch_loss: LossFn,
    batch_inputs: Callable[[torch.Tensor], Inputs],
    *,
    noise_multiplier: float,
    max_grad_norm: float,
    sample_rate: float,
    steps: int,
    optimizer: torch.optim.Optimizer,
    unsafe_seed: int | None = None,
    secure_mode: bool = False,
    lazy_noise: bool = True,
) -> DPTrainingResult:
    """Run ``steps`` DP-SGD steps with Poisson sampling at ``sample_rate``.

    ``batch_inputs(idx)`` returns the model input for the sampled indices
    (a dense tensor, or a ``participant.dp.sparse_rows.SparseBatch`` for fingerprints:
    the Linear layer that reads it then runs on the non-zeros only) and
    ``batch_loss(pred, idx)`` the per-sample losses. The privacy cost of the
    call is ``steps`` compositions of the subsampled Gaussian mechanism at
    (``noise_multiplier``, ``sample_rate``): the caller accounts for it.

    With plain SGD, a CSR-read weight's noise is by default owed per column
    and drawn when a batch next reads the column, or when training ends
    (``participant.dp.lazy_noise``): the same distribution of every step and of
    the trained model, with fewer draws. ``lazy_noise=False`` draws every
    step's noise for every parameter. Gradients are not kept: each ``p.grad``
    is None on return; a gradient already on a trained parameter is refused
    (it would be applied unclipped and un-noised).

    The batches and noise come from fresh OS entropy (``participant.dp.randomness``);
    ``unsafe_seed`` makes them reproducible, for tests only (it logs a warning).
    """
    if not 0 < sample_rate <= 1:
        raise ConfigError("sample_rate", "must be in (0, 1]", got=sample_rate)
    if noise_multiplier < 0 or max_grad_norm <= 0:
        raise ConfigError("noise_multiplier/max_grad_norm", "must be >= 0 and > 0",
                          got=(noise_multiplier, max_grad_norm))
    linears = linear_layers(model)  # fail closed before any step
    params = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]
    owner = {id(p): (m, p is m.weight) for m in linears for p in m.parameters()}
    foreign = [tuple(p.shape) for p in params if id(p) not in owner]
    dtypes = {p.dtype for p in params}
    if foreign or len(dtypes) > 1:
        raise ConfigError("optimizer", "every trained parameter must belong to one of the "
                          "model's Linear layers, all of one dtype",
                          got=f"outside the model: {foreign}; dtypes: {sorted(map(str, dtypes))}",
                          fix="build the optimizer from model.parameters()")
    stale = [tuple(p.shape) for p in params if p.grad is not None and bool(p.grad.any())]
    if stale:
        raise ConfigError("parameters", "a trained parameter already holds a gradient, which "
                          "the optimizer would apply unclipped and without noise",
                          got=f"non-zero .grad on parameters of shape {stale}",
                          expected="p.grad is None (or zero) for every trained parameter",
                          fix="call optimizer.zero_grad(set_to_none=True) before dp_train")
    for p in params:
        p.grad = None
    expected_batch = max(1, round(sample_rate * n_examples))
    std = noise_multiplier * max_grad_norm / expected_batch
    rng = DPRandom(unsafe_seed=unsafe_seed)
    # The noise's source is split off before any batch is drawn, so the batches are the
    # same whichever parameters turn out to get per-step or per-column noise.
    batch_rng, noise_rng = rng.spawn(), rng.spawn()
    sampler: Iterable[Sequence[int] | torch.Tensor] = (
        _poisson_batches(batch_rng.stream(), n_examples, sample_rate=sample_rate, steps=steps)
        if secure_mode else UniformWithReplacementSampler(
            num_samples=n_examples, sample_rate=sample_rate, generator=batch_rng.generator(),
            steps=steps))
    threads = torch.get_num_threads()
    model.train()
    total_loss, total_n, clipped, done = 0.0, 0, 0, 0
    tape = _Tape(linears)
    try:
        with ExitStack() as stack:
            stack.enter_context(sparse_input(model))
            layout: _NoiseLayout | None = None  # once the first batch shows the inputs
            batches = (torch.as_tensor(i, dtype=torch.long) for i in sampler)
            idx = next(batches, None)
            x = None if idx is None else batch_inputs(idx)
            while idx is not None and x is not None:
                # The next batch is gathered first, so the noise its forward pass
                # needs can be drawn beside this whole step.
                next_idx = next(batches, None)
                next_x = None if next_idx is None else batch_inputs(next_idx)
                if layout is not None:
                    layout.prepare(next_x)

                def per_sample(pred: torch.Tensor, i: torch.Tensor = idx) -> torch.Tensor:
                    return batch_loss(pred, i)

                losses = tape.forward(model, x, per_sample)
                if layout is None:
                    layout = _NoiseLayout.lay_out(
                        stack, params, owner, tape.inputs, optimizer, std=std,
                        rng=noise_rng,
                        secure_mode=secure_mode, lazy_noise=lazy_noise)
                    layout.prepare(next_x)
                slot = layout.noise.take()
                done += 1
                if next_x is not None:
                    # Step t+1's draw goes into the buffer step t-1 used (its update is
                    # done), beside this step's clipping and update.
                    layout.noise.begin()
                scaled, result = tape.clip(losses, max_grad_norm=max_grad_norm)
                del losses
                _add_clipped_sums(layout.eager, layout.views[slot], owner, scaled, tape.inputs,
                                  scale=1.0 / expected_batch)
                for m, owed in layout.lazy.items():
                    lr = float(layout.groups[m]["lr"])
                    _sgd_clipped_sum(m.weight, tape.inputs.get(m), scaled.get(m),
                                     alpha=-lr / expected_batch)
                    owed.step(lr=lr)
                optimizer.step()
                tape.inputs.clear()
                del scaled
                total_loss += result.loss_sum
                total_n += int(idx.numel())
                clipped += int((result.norms > max_grad_norm).sum())
                idx, x = next_idx, next_x
    finally:
        tape.close()
        torch.set_num_threads(threads)
    for p in params:  # a step's noisy gradient is spent; none is kept
        p.grad = None
    return DPTrainingResult(steps=done, mean_loss=total_loss / max(total_n, 1),
                            clipped_fraction=clipped / max(total_n, 1))


def _poisson_batches(stream: CsprngStream, n: int, *, sample_rate: float, steps: int
                     ) -> Iterator[torch.Tensor]:
    """Poisson subsampling (each example in with probability ``sample_rate``) from a CSPRNG."""
    for _ in range(steps):
        yield torch.nonzero(stream.uniform(n) < sample_rate).flatten()


class _NoiseLayout:
    """Each parameter's noise: drawn per step (``eager``) or owed per column (``lazy``)."""

    def __init__(self, noise: StepNoise, eager: list[torch.Tensor],
                 views: list[list[torch.Tensor]], lazy: dict[nn.Linear, LazyColumnNoise],
                 groups: dict[nn.Linear, dict[str, Any]]) -> None:
        self.noise, self.eager, self.views, self.lazy, self.groups = (
            noise, eager, views, lazy, groups)

    @classmethod
    def lay_out(cls, stack: ExitStack, params: list[torch.Tensor],
                owner: dict[int, tuple[nn.Linear, bool]], inputs: dict[nn.Linear, Inputs],
                optimizer: torch.optim.Optimizer, *, std: float,
                rng: DPRandom, secure_mode: bool, lazy_noise: bool) -> _NoiseLayout:
        """Lay out the noise after the first forward pass (nothing is owed before it).

        Weights that read CSR inputs go column-major; under plain SGD their
        noise is owed per column (``participant.dp.lazy_noise``), settled by a
        forward pre-hook just before the layer reads the columns and in full
        when training ends. Everything else gets each step's noise as one
        flat buffer, drawn on a helper thread beside the step when it is big.
        """
        csr = [m for m, x in inputs.items()
               if isinstance(x, SparseBatch) and m.weight.requires_grad]
        stack.enter_context(column_major(m.weight for m in csr))
        lazy: dict[nn.Linear, LazyColumnNoise] = {}
        groups: dict[nn.Linear, dict[str, Any]] = {}
        # Helper threads draw step t+1's noise during step t's update (and, for
        # per-step noise, step t+1's forward pass); training runs on one thread
        # fewer meanwhile. OpenMP's full team next to a busy helper ran a plain step
        # 3x slower (threads spin at barriers), and switching the team size per
        # phase cost ~0.25 ms each time.
        threads = torch.get_num_threads()
        for m in csr:
            x = inputs[m]
            assert isinstance(x, SparseBatch)
            # Owing pays per step for the columns read; it wins when it saves most draws.
            owe = (lazy_noise and not secure_mode
                   and len(x.columns) <= LAZY_MAX_READ_FRACTION * x.n_cols)
            group = plain_sgd_group(optimizer, m.weight) if owe else None
            if group is not None:
                # Entered after column_major, so left before it: the owed noise lands
                # in the weight even when a step raises (fail closed).
                lazy[m] = stack.enter_context(LazyColumnNoise(
                    m.weight, std=std, lr=float(group["lr"]), rng=rng.spawn(),
                    helper=threads > 1))
                groups[m] = group
                stack.callback(m.register_forward_pre_hook(_settle_hook(lazy[m])).remove)
        eager = [p for p in params if owner[id(p)][0] not in lazy or not owner[id(p)][1]]
        noise = stack.enter_context(StepNoise(
            sum(p.numel() for p in eager), std=std, rng=rng.spawn(),
            secure_mode=secure_mode, helper=threads > 1,
            dtype=params[0].dtype if params else torch.float32))
        if noise.has_helper or any(owed.has_helper for owed in lazy.values()):
            torch.set_num_threads(threads - 1)
        moved = {id(m.weight) for m in csr}
        views = [_views(b, eager, moved) for b in noise.buffers]
        noise.begin()
        return cls(noise, eager, views, lazy, groups)

    def prepare(self, x: Inputs | None) -> None:
        """Start drawing the per-column noise the forward pass on ``x`` will settle."""
        if isinstance(x, SparseBatch):
            for owed in self.lazy.values():
                owed.prepare(x.columns)


@torch.no_grad()
def _add_weight_sum(target: torch.Tensor, x: Inputs, gc: torch.Tensor, *, alpha: float) -> None:
    """``target += alpha * (c G)^T X`` in place: one ``addmm_`` with ``beta=1``, no copy."""
    if isinstance(x, SparseBatch):
        # (X^T G) into the column-major target's contiguous (in, out) form; rows the
        # batch does not read are left as they are.
        target.t().addmm_(x.transposed_csr, gc, alpha=alpha)
    else:
        target.addmm_(gc.t(), x, alpha=alpha)


def _sgd_clipped_sum(weight: torch.Tensor, x: Inputs | None, gc: torch.Tensor | None, *,
                     alpha: float) -> None:
    """``W += alpha * (c G)^T X``: plain SGD's step on the clipped sum alone."""
    if gc is not None and x is not None:  # else unused, or no example: noise alone
        _add_weight_sum(weight.data, x, gc, alpha=alpha)


def _settle_hook(owed: LazyColumnNoise) -> Callable[[nn.Module, tuple[Any, ...]], None]:
    def settle(module: nn.Module, args: tuple[Any, ...]) -> None:
        x = args[0]
        # A dense input reads every column.
        owed.settle(x.columns if isinstance(x, SparseBatch)
                    else torch.arange(owed.weight.shape[1]))
    return settle


def _views(buffer: torch.Tensor, params: list[torch.Tensor],
           transposed: Container[int] = frozenset()) -> list[torch.Tensor]:
    views, offset = [], 0
    for p in params:
        flat = buffer[offset:offset + p.numel()]
        views.append(flat.view(p.shape[1], p.shape[0]).t() if id(p) in transposed
                     else flat.view_as(p))
        offset += p.numel()
    return views


@torch.no_grad()
def _add_clipped_sums(params: list[torch.Tensor], views: list[torch.Tensor],
                      owner: dict[int, tuple[nn.Linear, bool]],
                      scaled: dict[nn.Linear, torch.Tensor],
                      inputs: dict[nn.Linear, Inputs], *, scale: float) -> None:
    """``p.grad = noise + scale * clipped sum``; the noise (std times ``scale``) is in ``p.grad``.

    Opacus's arithmetic, (clipped sum + N(0, sigma^2 C^2)) / expected batch,
    with the division applied to each term; for a weight it is one in-place
    ``addmm_`` with ``beta=1``: one pass, no copy.
    """
    for p, grad in zip(params, views, strict=True):
        p.grad = grad
        m, is_weight = owner[id(p)]
        gc = scaled.get(m)
        x = inputs.get(m)
        if gc is None:
            continue  # no example touched it: the update is the noise alone
        if not is_weight:
            grad.add_(gc.sum(dim=0), alpha=scale)
        else:
            assert x is not None
            _add_weight_sum(grad, x, gc, alpha=scale)
