"""The model's shape, found from its module tree: the decoder blocks, their linears, and the true-sequential
groups (the linears that read the same input tensor), with MoE experts as one linear per expert.

Nothing here knows a layer name. The model is built on the meta device (no memory); the decoder blocks are
the ``nn.ModuleList`` of ``config.num_hidden_layers`` modules; a block's groups are found by running it once
and grouping the ``nn.Linear`` calls by the identity of their input. A transformers 5 fused expert module (3-D
``gate_up_proj`` [E, 2I, H] and ``down_proj`` [E, H, I], called as ``experts(x, top_k_index, top_k_weights)``)
is replaced by :class:`ExpertLinears`, one ``nn.Linear`` per expert and projection, named as the checkpoint
names them on disk, so each expert gets the Hessian of the tokens routed to it.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from ..model import set_module
from .errors import PipelineError

# On disk, an expert's three projections carry one of these name triples (gate, up, down).
EXPERT_NAMES = (("gate_proj", "up_proj", "down_proj"), ("w1", "w3", "w2"))


class ExpertMLP(nn.Module):
    def __init__(self, names: tuple[str, str, str], hidden: int, inter: int, act: nn.Module):
        super().__init__()
        self.names = names
        for n, (o, i) in zip(names, ((inter, hidden), (inter, hidden), (hidden, inter))):
            self.add_module(n, nn.Linear(i, o, bias=False))
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g, u, d = (getattr(self, n) for n in self.names)
        return d(self.act(g(x)) * u(x))


class ExpertLinears(nn.ModuleList):
    """The experts of one MoE block as ``nn.Linear`` modules: ``y = Σ_k w_k · down_e(act(gate_e(x)) · up_e(x))``
    over the top-k experts e of each token, the same computation as transformers' fused experts."""

    is_experts = True

    def __init__(self, fused: nn.Module, names: tuple[str, str, str]):
        E, two_i, hidden = fused.gate_up_proj.shape
        super().__init__([ExpertMLP(names, hidden, two_i // 2, fused.act_fn) for _ in range(E)])

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor):
        out = torch.zeros_like(hidden_states)
        for e, expert in enumerate(self):
            tok, pos = torch.where(top_k_index == e)
            if tok.numel() == 0:
                continue
            y = expert(hidden_states[tok]) * top_k_weights[tok, pos, None]
            out.index_add_(0, tok, y.to(out.dtype))
        return out

    def stages(self, prefix: str) -> list[list[list[str]]]:
        """Two stages: every expert's (gate, up), then every expert's down (needs its gate/up quantized)."""
        p = f"{prefix}." if prefix else ""
        return [[[f"{p}{e}.{m.names[0]}", f"{p}{e}.{m.names[1]}"] for e, m in enumerate(self)],
                [[f"{p}{e}.{m.names[2]}"] for e, m in enumerate(self)]]


def _is_fused_experts(m: nn.Module) -> bool:
    gu, dn = getattr(m, "gate_up_proj", None), getattr(m, "down_proj", None)
    return (isinstance(gu, nn.Parameter) and isinstance(dn, nn.Parameter) and gu.dim() == 3 and dn.dim() == 3
            and hasattr(m, "act_fn"))


def unfuse_experts(block: nn.Module, disk_keys: set[str], block_prefix: str) -> None:
    """Replaces every fused expert module of ``block`` by :class:`ExpertLinears` named as on disk."""
    for name, m in list(block.named_modules()):
        if not _is_fused_experts(m):
            continue
        stem = f"{block_prefix}.{name}.0." if block_prefix else f"{name}.0."
        names = next((t for t in EXPERT_NAMES if all(f"{stem}{n}.weight" in disk_keys for n in t)), None)
        if names is None:
            found = sorted(k[len(stem):] for k in disk_keys if k.startswith(stem))
            raise PipelineError(f"block {block_prefix} is not supported: its experts {name!r} are fused in the module "
                                f"tree and the checkpoint does not name expert 0's projections {stem}{{gate,up,down}} "
                                f"as any of {EXPERT_NAMES} (found {found[:6]}); the block's modules: "
                                f"{[n for n, _ in block.named_modules() if n]}")
        set_module(block, name, ExpertLinears(m, names))


def build_skeleton(config):
    """The whole model on the meta device (no memory); raises PipelineError for an architecture transformers
    cannot build as a causal LM."""
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    except (ValueError, KeyError, AttributeError, TypeError) as e:
        raise PipelineError(f"model_type {getattr(config, 'model_type', None)!r} is not a causal LM that "
                            f"transformers can build: {str(e).splitlines()[0]}") from None
    return model.eval()


def find_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The decoder blocks: the one ``nn.ModuleList`` of ``config.num_hidden_layers`` modules."""
    n = getattr(model.config, "num_hidden_layers", None)
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) == n
             and not isinstance(m, ExpertLinears) and len({type(b) for b in m}) == 1]
    if len(found) != 1:
        raise PipelineError(f"cannot find the decoder blocks: expected one ModuleList of num_hidden_layers={n} "
                            f"blocks, found {[name for name, _ in found]}")
    return found[0]


class Probe(nn.Module):
    """Stands in for a decoder block: records what the model passes to it, returns its input (or a given
    tensor, to run the model's head on a hidden state computed elsewhere)."""

    def __init__(self, block: nn.Module, index: int, log: dict):
        super().__init__()
        for attr in ("attention_type", "layer_idx", "is_sliding"):
            if hasattr(block, attr):
                setattr(self, attr, getattr(block, attr))
        self.index, self.log, self.replace = index, log, None

    def forward(self, hidden_states, *args, **kwargs):
        if args:
            raise PipelineError("the model passes positional arguments to its blocks beyond hidden_states; "
                                "only keyword arguments are supported")
        self.log.setdefault("kwargs", {})[self.index] = kwargs
        if self.index == 0:
            self.log["hidden"] = hidden_states
        return hidden_states if self.replace is None else self.replace


def block_linears(block: nn.Module) -> dict[str, nn.Linear]:
    return {n: m for n, m in block.named_modules() if isinstance(m, nn.Linear)}


def routers(block: nn.Module) -> set[str]:
    """Linears that sit beside an experts module (routers): kept in full precision, as serving stacks expect."""
    out = set()
    for name, m in block.named_modules():
        if any(isinstance(c, ExpertLinears) for c in m.children()):
            out |= {f"{name}.{c}" if name else c for c, lin in m.named_children() if isinstance(lin, nn.Linear)}
    return out


@dataclass
class BlockPlan:
    """A block's linears in true-sequential stages; a stage is a list of groups collected in one pass, a group
    the linears that read one input tensor (they share one Hessian and, in NVFP4, one global scale)."""

    stages: list[list[list[str]]]
    skipped: list[str]  # linears left in full precision (routers)
    experts: set[str] = field(default_factory=set)  # linears of ExpertLinears (routed tokens: no QEP pairing)

    def is_expert_stage(self, stage: list[list[str]]) -> bool:
        return any(n in self.experts for g in stage for n in g)

    @property
    def groups(self) -> list[list[str]]:
        return [g for s in self.stages for g in s]

    @property
    def linears(self) -> list[str]:
        return [n for g in self.groups for n in g]


class _Seen(Exception):
    pass


@torch.no_grad()
def plan_block(block: nn.Module, hidden: torch.Tensor, kwargs: dict, group_size: int, where: str) -> BlockPlan:
    """Runs ``block`` once and groups its linears by the identity of their input tensor, in call order."""
    lins = block_linears(block)
    skip = routers(block)
    experts = {n: m for n, m in block.named_modules() if isinstance(m, ExpertLinears)}
    owner = {ln: e for e in experts for ln in lins if ln.startswith(e + ".")}
    calls: list[tuple[str, torch.Tensor]] = []
    handles = [m.register_forward_pre_hook(lambda _m, a, n=n: calls.append((n, a[0])))
               for n, m in lins.items() if n not in skip]
    try:
        block(hidden, **kwargs)
    except PipelineError:
        raise
    except Exception as e:  # any failure of an unknown architecture's forward is a refusal, not a crash
        raise PipelineError(f"{where}: the block's forward fails on calibration input ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''}); its modules: {list(lins)}") from None
    finally:
        for h in handles:
            h.remove()
    stages: list[list[list[str]]] = []
    placed_experts: set[str] = set()
    groups: list[tuple[torch.Tensor, list[str]]] = []  # (input tensor, the linears that read it)
    for n, x in calls:
        if n in owner:
            if owner[n] not in placed_experts:
                placed_experts.add(owner[n])
                stages += experts[owner[n]].stages(owner[n])
            continue
        g = next((names for t, names in groups if t is x), None)
        if g is None:
            g = [n]
            groups.append((x, g))
            stages.append([g])
        elif n not in g:
            g.append(n)
    plan = BlockPlan(stages, sorted(skip), set(owner))
    called = set(plan.linears) | skip
    never = [n for n in lins if n not in called]
    if never:
        raise PipelineError(f"{where}: linears {never} are never called by the block's forward; its modules: "
                            f"{list(lins)}")
    bad = [f"{n} (in_features {lins[n].in_features})" for n in plan.linears if lins[n].in_features % group_size]
    if bad:
        raise PipelineError(f"{where}: in_features must be a multiple of the format's group size {group_size}: "
                            f"{bad}")
    return plan


def materialize(module: nn.Module, source, prefix: str, device, dtype=torch.float32) -> nn.Module:
    """A real copy of meta ``module`` with every parameter and persistent buffer read from ``source`` under
    ``prefix`` (converted to ``dtype``); PipelineError when the names do not match the checkpoint."""
    real = copy.deepcopy(module)
    keys = source.key_set()
    state = {}
    names = [n for n, _ in real.named_parameters()] + [n for n, _ in real.named_buffers()
                                                        if _persistent(real, n)]
    missing = [n for n in names if f"{prefix}{n}" not in keys]
    if missing:
        raise PipelineError(f"{prefix.rstrip('.') or 'model'}: the checkpoint lacks {[prefix + n for n in missing][:6]} "
                            f"(the module tree names {names[:12]})")
    nonpersistent = [n for n, _ in real.named_buffers() if not _persistent(real, n)]
    if nonpersistent:
        raise PipelineError(f"{prefix.rstrip('.')}: buffers {nonpersistent} are computed, not stored; "
                            "this architecture's blocks are not supported")
    for n in names:
        t = source.get(f"{prefix}{n}")
        state[n] = t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)
    real = real.to_empty(device=device)
    real.load_state_dict(state, strict=True, assign=True)
    for p in real.parameters():
        p.requires_grad_(False)
    return real


def _persistent(root: nn.Module, name: str) -> bool:
    parent, _, leaf = name.rpartition(".")
    m = root.get_submodule(parent) if parent else root
    return leaf not in m._non_persistent_buffers_set


__all__ = ["ExpertLinears", "Probe", "BlockPlan", "build_skeleton", "find_layers", "unfuse_experts",
           "plan_block", "materialize", "block_linears", "routers"]
