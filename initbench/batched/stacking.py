"""K models of one architecture as one function of their stacked state, for torch.func.vmap.

`stack_models` turns K nn.Modules into dicts of stacked tensors (leading dim K) plus one meta-device
template; `functional_call(template, (params, buffers), x)` then runs one model, and vmap runs all K.
cuDNN's (and ATen's) fused LSTM has no vmap rule, so the template swaps every nn.LSTM for
`LoopLSTM`: the same parameters under the same names, the same arithmetic, written as a loop of cells.
"""

import copy

import torch
from torch import nn
from torch.nn import functional as F


class Unbatchable(ValueError):
    """These models cannot be trained together with torch.func; train them one by one instead."""


class LoopLSTM(nn.Module):
    """nn.LSTM as a Python loop over time steps, in plain tensor ops that torch.func.vmap can batch.

    It holds the wrapped nn.LSTM's parameters under the same names (`weight_ih_l0`, `weight_hh_l0`,
    `bias_ih_l0`, `bias_hh_l0`, ...), takes and returns what nn.LSTM does for batched input, and
    follows ATen's CPU LSTM step for step, so float64 results agree to rounding:
    gates = (h W_hh^T + b_hh) + (x W_ih^T + b_ih), chunked i, f, g, o; c' = f c + i g; h' = o tanh(c').
    Not supported (Unbatchable): bidirectional, proj_size, dropout between layers, unbatched input.
    """

    def __init__(self, lstm: nn.LSTM):
        super().__init__()
        if lstm.bidirectional or lstm.proj_size or (lstm.dropout and lstm.num_layers > 1):
            raise Unbatchable("batched training supports unidirectional nn.LSTM without proj_size or "
                              f"dropout only, got {lstm}")
        self.hidden_size, self.num_layers = lstm.hidden_size, lstm.num_layers
        self.batch_first, self.bias = lstm.batch_first, lstm.bias
        for name, param in lstm.named_parameters(recurse=False):
            self.register_parameter(name, param)

    def forward(self, x: torch.Tensor, hx: tuple[torch.Tensor, torch.Tensor] | None = None):
        if x.dim() != 3:
            raise Unbatchable(f"LoopLSTM takes batched (3-D) input, got shape {tuple(x.shape)}")
        seq = x if self.batch_first else x.transpose(0, 1)  # (N, T, F)
        n, steps = seq.shape[:2]
        h_n, c_n = [], []
        for layer in range(self.num_layers):
            w_ih, w_hh = getattr(self, f"weight_ih_l{layer}"), getattr(self, f"weight_hh_l{layer}")
            b_ih = getattr(self, f"bias_ih_l{layer}") if self.bias else None
            b_hh = getattr(self, f"bias_hh_l{layer}") if self.bias else None
            if hx is None:
                h = c = seq.new_zeros(n, self.hidden_size)
            else:
                h, c = hx[0][layer], hx[1][layer]
            # all time steps' input projections at once, as ATen does on the CPU; unbind, not
            # inputs[:, t]: the backward of T selects would write T full-size gradients
            inputs = F.linear(seq, w_ih, b_ih).unbind(1)
            outputs = []
            for t in range(steps):
                i, f, g, o = (F.linear(h, w_hh, b_hh) + inputs[t]).chunk(4, 1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(c)
                outputs.append(h)
            seq = torch.stack(outputs, 1)
            h_n.append(h)
            c_n.append(c)
        out = seq if self.batch_first else seq.transpose(0, 1)
        return out, (torch.stack(h_n), torch.stack(c_n))


def vmappable(model: nn.Module) -> nn.Module:
    """A meta-device copy of `model` (no storage) with every nn.LSTM replaced by a LoopLSTM."""
    template = copy.deepcopy(model).to("meta")
    for name, module in list(template.named_modules()):
        if type(module) is nn.LSTM:
            if not name:
                raise Unbatchable("the model is a bare nn.LSTM: wrap it in a module that returns logits")
            parent_name, _, child = name.rpartition(".")
            setattr(template.get_submodule(parent_name), child, LoopLSTM(module))
        elif isinstance(module, nn.RNNBase) and type(module) is not LoopLSTM:
            raise Unbatchable(f"{name or 'the model'} is a {type(module).__name__}: only nn.LSTM has a "
                              "vmap-able replacement (LoopLSTM)")
    return template


def param_names(model: nn.Module) -> list[str]:
    return [name for name, _ in model.named_parameters()]


def stack_models(models: list[nn.Module], device: torch.device | str | None = None):
    """(template, params, buffers): the models' parameters and buffers stacked along a new dim 0,
    detached copies (bit for bit), on `device` (default: where they are)."""
    if not models:
        raise ValueError("stack_models needs at least one model")
    first = models[0]
    spec = [(n, p.shape, p.dtype) for n, p in first.named_parameters()]
    bspec = [(n, b.shape, b.dtype) for n, b in first.named_buffers()]
    for i, model in enumerate(models[1:], 1):
        if type(model) is not type(first) or \
                [(n, p.shape, p.dtype) for n, p in model.named_parameters()] != spec or \
                [(n, b.shape, b.dtype) for n, b in model.named_buffers()] != bspec:
            raise Unbatchable(f"model {i} ({type(model).__name__}) has another architecture than model 0 "
                              f"({type(first).__name__}): only models of one architecture train together")

    def stack(tensors):
        return torch.stack([t.detach() for t in tensors]).to(device if device is not None else tensors[0].device)

    params = {n: stack([dict(m.named_parameters())[n] for m in models]) for n, _, _ in spec}
    buffers = {n: stack([dict(m.named_buffers())[n] for m in models]) for n, _, _ in bspec}
    return vmappable(first), params, buffers


@torch.no_grad()
def unstack_into(models: list[nn.Module], params: dict, buffers: dict, slots: list[int]) -> None:
    """Copy slot slots[i] of the stacked state back into models[i] (its parameters and buffers),
    moving each model to the stacked state's device, as fit() leaves its model on the data's device."""
    for model, slot in zip(models, slots, strict=True):
        device = next(iter(params.values())).device
        model.to(device)
        for name, p in model.named_parameters():
            p.copy_(params[name][slot])
        for name, b in model.named_buffers():
            b.copy_(buffers[name][slot])
