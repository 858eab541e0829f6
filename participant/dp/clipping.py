"""Per-sample gradient clipping for Linear networks in one backward pass.

DP-SGD (Abadi et al. 2016, "Deep Learning with Differential Privacy") clips
each example's gradient to ``max_grad_norm`` before summing. Materialising
per-sample gradients (Opacus's default hooks, ``GradSampleModule``) costs B
copies of every weight matrix; here it was 39x slower than plain training.
For a Linear layer with input ``a_i`` and output gradient ``g_i`` the
per-sample weight gradient is the outer product ``g_i a_i^T``, so

    ||grad_i W||_F = ||a_i|| * ||g_i||,   ||grad_i b|| = ||g_i||

(Goodfellow 2015, "Efficient per-example gradient computations"; the same
identity underlies Opacus's ghost clipping, Li et al. 2022). With clip
factors ``c_i = min(1, C / (||grad_i|| + 1e-6))`` (Opacus's formula) the
clipped sum is ``(c * G)^T A`` for the weight and ``sum_i c_i g_i`` for the
bias: one matmul per layer, the cost of an ordinary weight gradient.

A :class:`Tape` records each Linear's input ``A`` and output ``Z`` during the
forward pass; :meth:`Tape.clip` takes ONE ``autograd.grad`` of the summed
per-sample losses with respect to the ``Z`` (no weight gradients are computed
by autograd) and returns the clip-scaled output gradients ``c_i * g_i`` and
the norms. :func:`clip_and_sum` writes the clipped sums into ``p.grad``; the
training loop (:mod:`participant.dp.training`) instead hands the scaled
gradients to the noisy step (:mod:`participant.dp.noisy_step`). When a layer
reads CSR rows (:class:`participant.dp.sparse_rows.SparseBatch`), ``||a_i||^2``
comes from the stored values and ``X^T (c * G)`` from CSR.

The path is exact DP-SGD for networks whose parameters all live in
``nn.Linear`` layers applied once per forward to 2-D inputs, combined with
parameter-free modules (ReLU, Dropout, ...). Anything else is refused
(fail closed) rather than silently mis-clipped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from participant.dp.sparse_rows import SparseBatch, sparse_input
from protocols.errors import ConfigError

__all__ = ["ClippedGradients", "Inputs", "Tape", "clip_and_sum", "linear_layers"]

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


class Tape:
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
        """Remove the forward hooks."""
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
    tape = Tape(linear_layers(model))
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
