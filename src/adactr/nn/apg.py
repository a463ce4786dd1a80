"""APG: an instance-adaptive linear layer (Yan et al., "APG: Adaptive Parameter Generation Network for
Click-Through Rate Prediction", NeurIPS 2022, Section 3).

A static layer computes ``y = W x + b`` with one ``W`` (N x M) for every instance. APG generates the
weights of instance ``i`` from a condition ``z_i`` with a generator network ``G`` (Section 3.1.2)::

    v1  W_i = reshape(G(z_i))                           y = W_i x                eqs. (1)-(2)
    v2  U_i, S_i, V_i = reshape(G(z_i))                 y = (U_i S_i V_i) x       eq. (3)
    v3  same generated U_i, S_i, V_i                    y = U_i (S_i (V_i x))     eq. (4)
    v4  S_i = reshape(G(z_i)); U, V shared, learned     y = U (S_i (V x))         eqs. (5)-(6)
    v5  v4 with U = U^l U^r, V = V^l V^r (inner size P) y = U (S_i (V x))         eq. (7)

    shapes: x (M,)  y (N,)  U (N, K)  S (K, K)  V (K, M)  U^l (N, P)  U^r (P, K)  V^l (K, P)  V^r (P, M)

v2 and v3 are the same function (v3 only avoids reconstructing ``W_i``); v5 is trained with the
factors and *served* as v4: :meth:`APGLinear.collapse` multiplies ``U^l U^r`` and ``V^l V^r`` once and
returns a v4 layer with those products as its ``U`` and ``V`` ("No Additional Inference Latency and
Memory Cost", Section 3.2).

The condition ``z_i`` (Section 3.1.1) is built once per batch by :class:`APGCondition` and handed to
every APG layer of the model (the ``cond`` of the adaptive interface ``forward(x, cond)``)::

    group       z = [e_f1; e_f2; ...]  the embeddings of ``condition_fields``          (B, k D)
    mix_input   z = agg_j(e_j)         concat (B, k D) / mean (B, D) / attention (B, D)
    mix_output  z = stack_j(e_j)       (B, k, D): layer j-th APG gets e_j, outputs aggregated
    self        z = x                  the layer's own input (in a tower: before the previous layer's
                                       dropout, ``condition_before_dropout``); the builder returns None

Choices the paper leaves open (the appendix is not part of the text we implement from), with what was
measured for them on Frappe_x1 and the built-in click world in docs/apg.md:

- **The condition's scale.** ``z`` is normalised before ``G`` (``condition_norm``: LayerNorm without
  affine by default, or batch norm, or none). Conditions made of embeddings have rms 1e-4 at
  initialisation and ~0.005 under embedding L2, and without normalisation the instance-varying part of a
  generated matrix is rms(z) times its shared part: the layer is then static in all but name.
- ``G`` is an MLP with ``generator_hidden`` hidden layers (ReLU, He-initialised with zero biases, so a
  normalised condition keeps unit scale through them); ``()`` is the single perceptron layer the paper
  uses for its complexity analysis (Section 3.3). The output layer's bias holds the shared part of each
  generated matrix and its weight the instance-varying part, each drawn with half of the matrix's LeCun
  variance: for a normalised condition a fresh layer's ``S_i`` varies across instances as much as it is
  shared, whatever the condition's scale (with ``condition_norm=none`` the varying part is rms(z) times
  the shared part).
- The bias: eq. (2) has none. ``generate_bias=False`` keeps one static learned ``b`` (N,) (as
  ``nn.Linear``); ``True`` generates ``b_i`` with the other parameters (as FuxiCTR and BARS' APG do),
  initialised like a static layer on the normalised condition (shared part 0, weights 1/sqrt(fan_in)).
  For self-wise layers that is a full-width path from the layer's input.
- A full-width path beside the rank-K term (not in the paper): ``static_weight=True`` adds a static
  full-rank ``W_0 x`` (LeCun-initialised, so of the rank-K term's scale), making APG an instance-adaptive
  low-rank correction of a static layer: ``y = W_0 x + U S_i V x + b``. Without it every output of a
  v4/v5 layer lies in the K-dimensional column space of the shared ``U``.
- Mix-wise output aggregation ("feeds different z^j into different APG and obtains W^j ... then the
  aggregation is applied to these adaptive parameters"): :class:`APGMixOutput` holds one complete APG
  per condition embedding (its own generator and, for v4/v5, its own shared U, V). Aggregating the
  parameters and aggregating the outputs are the same thing because every branch is linear in x:
  ``mean``: W_i = mean_j W_i^j, y = mean_j y^j; ``attention``: W_i = sum_j a_ij W_i^j with
  ``a_i = softmax_j(h^T tanh(A z_i^j + c))`` (AFM-style pooling scored on the conditions, so the mixed
  W_i depends on the conditions only, as a generated parameter should); ``concat``: the k weights are
  stacked into a (k N) x M matrix and a learned static ``W_o`` (N x k N) maps back to N outputs,
  W_i = W_o [W_i^0; ...; W_i^{k-1}], i.e. ``y = W_o [y^0; ...; y^{k-1}]``.
- Mix-wise input ``attention``: the same pooling, ``z_i = sum_j a_ij e_j``.
- Ablation (not in the paper): ``adaptive=False`` keeps every shape and initial scale but learns the
  matrices as static parameters (:class:`StaticParameters`), so v4/v5 become a static factorised rank-K
  layer. Comparing it with APG separates what generation adds from what the rank-K limit costs.
- Mix-wise conditions use ``condition_fields`` when given, else every field.

>>> cfg = APGConfig(version=APGVersion.V5, rank=2, overparam_dim=8, condition=ConditionMode.GROUP,
...                 condition_fields=("user",))
>>> layer = APGLinear(6, 3, config=cfg, cond_dim=4)
>>> x, z = torch.randn(5, 6), torch.randn(5, 4)
>>> layer(x, z).shape
torch.Size([5, 3])
>>> torch.allclose(layer.collapse()(x, z), layer(x, z), atol=1e-6)
True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import Enum

import torch
from torch import Tensor, nn

from adactr.data.schema import FieldLayout
from adactr.data.tensors import Batch
from adactr.errors import AdactrError, ConfigError
from adactr.nn.mlp import MLP, WideOutputLinear
from adactr.nn.penalty import add_penalty, penalties_active


class APGVersion(str, Enum):
    V1 = "v1"  # basic: W_i generated, eqs. (1)-(2)
    V2 = "v2"  # low-rank: U_i, S_i, V_i generated, W_i reconstructed, eq. (3)
    V3 = "v3"  # decomposed feed-forward: U_i(S_i(V_i x)), eq. (4)
    V4 = "v4"  # parameter sharing: U, V shared, S_i generated, eqs. (5)-(6)
    V5 = "v5"  # over-parameterisation: U = U^l U^r, V = V^l V^r, eq. (7); served as v4


class ConditionMode(str, Enum):
    GROUP = "group"  # z = the chosen fields' embeddings, concatenated
    MIX_INPUT = "mix_input"  # z = aggregate of several field embeddings, then one APG
    MIX_OUTPUT = "mix_output"  # one APG per field embedding, outputs (= parameters) aggregated
    SELF = "self"  # z = the layer's own input


class ConditionNorm(str, Enum):
    """How the condition is normalised before the generator ``G`` (see the module docstring)."""

    NONE = "none"  # z as given (the paper): the varying part of S_i scales with rms(z)
    LAYER = "layer"  # LayerNorm over z's features, no affine: every instance's condition has rms 1
    BATCH = "batch"  # BatchNorm1d, no affine: each feature standardised over the batch (running stats in eval)


class Aggregation(str, Enum):
    CONCAT = "concat"
    MEAN = "mean"
    ATTENTION = "attention"


@dataclass(frozen=True)
class APGConfig:
    """APG hyper-parameters (``model.apg.*``)."""

    version: APGVersion = APGVersion.V5  # the full APG; best of the ablation (Table 4)
    # K: the efficiency study's setting (Section 4.4, "we set K = 4"). With W_0 beside it (static_weight)
    # a larger K did not help: on the click world (embedding L2 1e-3) K = 16 scored 0.8153 against 0.8171 (DeepFM,
    # group-wise, 3 seeds, docs/apg.md). One value for every APG layer, or a list with one value per APG
    # layer in the order the model builds them: its tower from the input up, then (model.adaptive_cross)
    # the cross layers
    rank: int | tuple[int, ...] = 4
    # P, v5 only; 0 = 8 K. The paper asks P >> K and gives no value; 8 K (32 at K = 4) adds N P + P K
    # shared parameters per factor (13k for N = 400) to v4's N K (1.6k), still far below a static
    # 400 x 400 layer (160k). Tying the default to K keeps P >> K when only K is changed. A list: per layer.
    overparam_dim: int | tuple[int, ...] = 0
    # hidden sizes of the generator G; () = the single perceptron layer of the complexity analysis (3.3).
    # A hidden layer did not help: on the click world (L2 1e-3) [64] scored 0.8087 against 0.8171 (3 seeds), and
    # on Frappe_x1 FuxiCTR's [512, 256] with a generated bias 0.9814 against Base's 0.9843 (docs/apg.md)
    generator_hidden: tuple[int, ...] = ()
    generate_bias: bool = False  # eq. (2) has no bias: keep a static shared b unless asked to generate b_i
    # not in the paper: a static full-rank W_0 x beside the adaptive rank-K term (a full-width path). On by
    # default: without it every v4/v5 layer's output lies in a K-dimensional subspace, and on the click world
    # (whose click model changes by domain and user group) DeepFM + group-wise APG at K = 4 lost 0.034 AUC to
    # Base without W_0 and 0.004 with it (3 seeds, docs/apg.md). It costs a static layer's N M weights:
    # false gives the paper's layer and its savings (Table 5 measures that one)
    static_weight: bool = True
    # not in the paper: with static_weight, the adaptive term starts at zero (the generated S_i, W_i for v1,
    # is 0 for every instance at initialisation: its generator's output weights and bias are zeroed, as
    # LoRA zeroes one factor), so a fresh APG model computes its Base model's function and the
    # instance-adaptive correction grows only as far as training finds it useful. Off: on Frappe_x1 DeepFM it
    # moved self-wise from -0.0027 to -0.0019 below Base and group-wise from -0.0012 to -0.0010 (3 seeds,
    # within about a std), and left the click world level (seed 1) (docs/apg.md)
    correction_starts_at_zero: bool = False
    # W_0's initialisation: "lecun" (normal, std 1/sqrt(M): the rank-K term's scale) or "linear" (nn.Linear's
    # uniform, std 1/sqrt(3 M), what Base's static layers start from); a probe of why the static ablation
    # scores below Base on Frappe_x1: "linear" alone made it worse (0.9811 against 0.9826, 3 seeds), with
    # correction_starts_at_zero (the layer starts as Base's) it is level with Base within noise (0.9834
    # against 0.9843 ± 0.0008) while adaptive APG started so stays at 0.9824 (docs/apg.md). Default kept:
    # the adaptive layer scores the same with either start
    w0_init: str = "lecun"
    # not in the paper: rate of an L2 penalty on G's output weights, the instance-varying part of every
    # generated matrix (its bias, the shared part, is not penalised), added to the training loss as
    # rate x ||W_G||^2 per APG layer; it shrinks the adaptation toward the shared parameters where the data
    # does not pay for it. 0 = off. On Frappe_x1 DeepFM, 0.3 brought self-wise APG from -0.0027 to -0.0007
    # below Base by making its layers nearly static (weight adaptivity <= 0.11, 3 seeds): it measures how
    # much adaptation a dataset pays for, and is no default (the click world, where adaptation pays, is untested)
    generator_l2: float = 0.0
    # normalise z before G, so that the generated part is not starved by a small-scale condition (embeddings
    # have rms 1e-4 at init): with "none" a fresh layer's S_i varied by 0.6-0.9 % across instances
    condition_norm: ConditionNorm = ConditionNorm.LAYER
    # self-wise: z is the layer's input before the previous layer's dropout (the tower's ``source``), not
    # after it. Dropout stays on the layer's own input x. Normalising a dropped-out input changes its
    # direction and scale, so the conditions seen in training are not those of evaluation. DeepFM on
    # Frappe_x1, seeds 1-3: test LogLoss 0.1540 against 0.1645 with the dropped-out condition, every seed
    # lower, AUC level (0.9817 against 0.9814), 12-13 epochs against 13-17. On MovieLens-1M it costs a
    # little: LogLoss 0.5179 against 0.5161, AUC 0.8161 against 0.8166, within a std (docs/apg.md)
    condition_before_dropout: bool = True
    # ablation, not APG: False learns the same matrices as static parameters instead of generating them
    # (v4/v5: a static factorised rank-K layer U S V), separating APG's gain or loss from the rank limit
    adaptive: bool = True
    # self-wise needs no prior knowledge of the data (3.1.1), so it works on any dataset by default
    condition: ConditionMode = ConditionMode.SELF
    aggregation: Aggregation = Aggregation.CONCAT  # mix-wise only
    condition_fields: tuple[str, ...] = ()  # group: required; mix-wise: () = every field; self: unused

    def __post_init__(self) -> None:
        # single-key checks only: a config file and --set are applied one after the other, so the
        # cross-key checks wait for :meth:`check`, run when a model is built
        if not _values(self.rank) or min(_values(self.rank)) < 1:
            raise ConfigError(f"apg.rank (K) must be >= 1, got {_show(self.rank)}")
        if not _values(self.overparam_dim) or min(_values(self.overparam_dim)) < 0:
            raise ConfigError(f"apg.overparam_dim (P) must be >= 1 (or 0 for 8 x rank), got "
                              f"{_show(self.overparam_dim)}")
        if self.w0_init not in ("lecun", "linear"):
            raise ConfigError(f"apg.w0_init must be lecun or linear, got {self.w0_init!r}")
        if self.generator_l2 < 0:
            raise ConfigError(f"apg.generator_l2 must be >= 0, got {self.generator_l2}")
        if any(h < 1 for h in self.generator_hidden):
            raise ConfigError(f"apg.generator_hidden sizes must be >= 1, got {list(self.generator_hidden)}")

    @property
    def K(self) -> int:
        """The rank of a one-layer config (see :meth:`for_layer`)."""
        if isinstance(self.rank, tuple):
            raise ConfigError("apg.rank is a per-layer list here; use APGConfig.for_layer(i)")
        return self.rank

    @property
    def P(self) -> int:
        """The over-parameterisation size of a one-layer config: ``overparam_dim``, or 8 K when 0."""
        if isinstance(self.overparam_dim, tuple):
            raise ConfigError("apg.overparam_dim is a per-layer list here; use APGConfig.for_layer(i)")
        return self.overparam_dim or 8 * self.K

    @property
    def per_layer(self) -> int:
        """How many layers the per-layer lists describe (0: rank and overparam_dim are single values)."""
        return max(len(v) if isinstance(v, tuple) else 0 for v in (self.rank, self.overparam_dim))

    def for_layer(self, i: int) -> APGConfig:
        """The config of the i-th APG layer the model builds: single K and P (lists indexed by i)."""
        n = self.per_layer
        if n and i >= n:
            raise ConfigError(f"apg.rank / apg.overparam_dim list {n} values, one per APG layer, but the model "
                              f"builds more APG layers than that")
        return replace(self, rank=_at(self.rank, i), overparam_dim=_at(self.overparam_dim, i))

    def check(self) -> None:
        """The checks that involve several keys (ConfigError naming the key)."""
        lens = {len(v) for v in (self.rank, self.overparam_dim) if isinstance(v, tuple)}
        if len(lens) > 1:
            raise ConfigError(f"apg.rank ({_show(self.rank)}) and apg.overparam_dim ({_show(self.overparam_dim)}) "
                              f"are per-layer lists of different lengths")
        for i in range(max(self.per_layer, 1)):
            one = self.for_layer(i)
            if self.version is APGVersion.V5 and one.P < one.K:
                at = f" (layer {i})" if self.per_layer else ""
                raise ConfigError(f"apg.overparam_dim (P) = {one.P} is below apg.rank (K) = {one.K}{at}: "
                                  f"over-parameterisation (eq. 7) needs P >= K (P >> K)")
        dupes = sorted({f for f in self.condition_fields if self.condition_fields.count(f) > 1})
        if dupes:
            raise ConfigError(f"apg.condition_fields lists {dupes[0]!r} twice")
        if self.condition is ConditionMode.GROUP and not self.condition_fields:
            raise ConfigError("apg.condition=group needs apg.condition_fields (the fields naming the group)")
        if self.condition is ConditionMode.SELF and self.condition_fields:
            raise ConfigError("apg.condition_fields is not used by apg.condition=self (the condition is the "
                              "layer's input); use group, mix_input or mix_output")
        if self.correction_starts_at_zero and not self.static_weight:
            raise ConfigError("apg.correction_starts_at_zero needs apg.static_weight=true: without W_0 a layer whose "
                              "adaptive term is 0 outputs its bias alone")
        if self.generator_l2 > 0 and not self.adaptive:
            raise ConfigError("apg.generator_l2 penalises the generator's instance-varying part, which "
                              "apg.adaptive=false does not have; set one of them")
        if self.condition in (ConditionMode.GROUP, ConditionMode.SELF) and \
                self.aggregation is not Aggregation.CONCAT:
            raise ConfigError(f"apg.aggregation={self.aggregation.value} applies to mix_input / mix_output "
                              f"conditions only, not to apg.condition={self.condition.value}")


def _values(v: int | tuple[int, ...]) -> tuple[int, ...]:
    return v if isinstance(v, tuple) else (v,)


def _at(v: int | tuple[int, ...], i: int) -> int:
    return v[i] if isinstance(v, tuple) else v


def _show(v: int | tuple[int, ...]) -> str:
    return str(list(v)) if isinstance(v, tuple) else str(v)


# ---- building blocks ---------------------------------------------------------------------------------

class AttentionWeights(nn.Module):
    """``a_j = softmax_j(h^T tanh(A z_j + c))``: (B, k, D) -> (B, k) weights summing to 1 over j.

    The attention pooling of AFM (Xiao et al., IJCAI 2017, eq. 4), tanh instead of ReLU so that no
    score is dead at initialisation; attention size = D.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, dim)  # A, c
        self.h = nn.Parameter(torch.randn(dim) / math.sqrt(dim))

    def forward(self, z: Tensor) -> Tensor:
        scores = torch.tanh(self.proj(z)) @ self.h  # (B, k)
        return torch.softmax(scores, dim=-1)  # (B, k)


NORM_EPS = 1e-12  # the condition normalisation's eps (see ParameterGenerator)
PROBE_ROWS = 1024  # unit-normal conditions pushed through G's hidden layers to initialise its output layer


@dataclass(frozen=True)
class Generated:
    """One matrix (or vector) a generator emits per instance: its name in the paper (``W``, ``U``, ``S``,
    ``V``, ``b``), its shape, and the standard deviations of its shared and instance-varying parts at
    initialisation (for a unit-scale condition)."""

    name: str
    shape: tuple[int, ...]
    shared_std: float
    varying_std: float


class ParameterGenerator(nn.Module):
    """``G`` of eqs. (1), (3), (5): z (B, Dz) -> ``{name: (B, *shape)}`` for each :class:`Generated`.

    ``z`` is normalised (``norm``), then an :class:`MLP` (hidden layers He-initialised, zero biases) emits the
    flattened matrices. The output layer is set from a probe of unit-normal conditions through the hidden
    layers (mean activation ``h_mean``, mean variance ``h_var``): weights ``g.varying_std * N(0, 1) /
    sqrt(fan_in * h_var)``, so the part of output row ``r`` of matrix ``g`` that varies with the condition
    has rms ``g.varying_std``, and bias ``g.shared_std * N(0, 1) - W h_mean``, so the part shared by all
    instances has rms ``g.shared_std``.
    """

    def __init__(self, *, cond_dim: int, hidden: Sequence[int], outputs: Sequence[Generated],
                 norm: ConditionNorm) -> None:
        super().__init__()
        self.outputs = tuple(outputs)
        self.sizes = [math.prod(g.shape) for g in self.outputs]
        # eps far below the default 1e-5: a condition of rms 1e-4 (embeddings at initialisation) has variance
        # 1e-8, which a 1e-5 eps would swamp, shrinking the normalised condition to rms 0.03
        self.norm: nn.Module = {ConditionNorm.NONE: nn.Identity(),
                                ConditionNorm.LAYER: nn.LayerNorm(cond_dim, eps=NORM_EPS, elementwise_affine=False),
                                ConditionNorm.BATCH: nn.BatchNorm1d(cond_dim, eps=NORM_EPS, affine=False)}[norm]
        self.net = MLP(input_dim=cond_dim, hidden=tuple(hidden), output_dim=sum(self.sizes),
                       output_layer=WideOutputLinear)
        out = self.net.out
        assert out is not None
        with torch.no_grad():
            for layer in self.net.layers:  # ReLU follows: He init keeps a unit-scale condition at unit scale
                nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
                nn.init.zeros_(layer.bias)
            sized = list(zip(self.sizes, self.outputs, strict=True))
            shared = torch.cat([torch.full((n,), g.shared_std) for n, g in sized])  # (sum sizes,)
            varying = torch.cat([torch.full((n,), g.varying_std) for n, g in sized])  # (sum sizes,)
            # The hidden activations seen by the output layer, probed with unit-normal conditions (what the
            # normalisation produces): their mean goes into the shared part, their spread sets the scale.
            # Without hidden layers the probe is the condition itself (mean 0, variance 1).
            h = torch.randn(PROBE_ROWS, cond_dim)  # (R, Dz)
            if isinstance(self.norm, nn.LayerNorm):
                h = self.norm(h)  # rows centred and scaled, as the normalised conditions will be
            for layer, post in zip(self.net.layers, self.net.post, strict=True):
                h = post(layer(h))  # (R, h)
            h_mean, h_var = h.mean(0), h.var(0).mean().clamp(min=1e-12)  # (h,), ()
            W = torch.randn_like(out.weight) * (varying / (out.in_features * h_var).sqrt())[:, None]
            out.weight.copy_(W)  # (sum sizes, h): the varying part W (h - mean h) has rms ``varying``
            out.bias.copy_(torch.randn(sum(self.sizes)) * shared - W @ h_mean)  # shared part of rms ``shared``

    def forward(self, z: Tensor) -> dict[str, Tensor]:
        flat = self.net(self.norm(z))  # (B, sum of sizes)
        B = flat.shape[0]
        if len(self.sizes) == 1:  # no split: its backward would copy the whole (B, N*M) gradient once more
            return {self.outputs[0].name: flat.reshape(B, *self.outputs[0].shape)}
        parts = flat.split(self.sizes, dim=1)  # (B, size) each
        return {g.name: p.reshape(B, *g.shape) for g, p in zip(self.outputs, parts, strict=True)}


class StaticParameters(nn.Module):
    """The ablation of ``G`` (``model.apg.adaptive=false``): the same matrices with the same initial
    scale (shared and varying parts together), learned as ordinary parameters and shared by every
    instance; the condition is ignored."""

    def __init__(self, *, outputs: Sequence[Generated]) -> None:
        super().__init__()
        self.names = tuple(g.name for g in outputs)
        self.params = nn.ParameterList(
            nn.Parameter(torch.randn(*g.shape) * math.hypot(g.shared_std, g.varying_std)) for g in outputs)

    def forward(self, z: Tensor) -> dict[str, Tensor]:
        B = z.shape[0]
        return {n: p.expand(B, *p.shape) for n, p in zip(self.names, self.params, strict=True)}  # views


# ---- the layer ---------------------------------------------------------------------------------------

class APGLinear(nn.Module):
    """One APG layer, M = ``in_features`` -> N = ``out_features``: ``forward(x (B, M), cond) -> (B, N)``.

    ``cond`` is ``z`` (B, ``cond_dim``); with ``config.condition = self`` it is ignored and ``z = x``.
    Versions v1..v5 as in the module docstring (eqs. 1-7), plus ``W_0 x`` when ``static_weight``.
    In ``mix_output`` mode this is one of the k branches of :class:`APGMixOutput` and takes one condition
    embedding. :meth:`generated` returns what the generator makes for a batch (the adaptivity diagnostic).
    """

    def __init__(self, in_features: int, out_features: int, *, config: APGConfig, cond_dim: int = 0) -> None:
        super().__init__()
        config.check()
        M, N, K, P = in_features, out_features, config.K, config.P
        self.self_wise = config.condition is ConditionMode.SELF
        Dz = M if self.self_wise else cond_dim
        if M < 1 or N < 1 or Dz < 1:
            raise ValueError(f"APGLinear needs in, out and condition sizes >= 1; got {M}, {N}, {Dz}")
        self.in_features, self.out_features, self.cond_dim = M, N, cond_dim
        self.config, self.version = config, config.version
        v = config.version
        # Each matrix has the LeCun variance of its own fan-in (W, V: M; S, U: K), so that U S V x has the
        # scale of a LeCun-initialised W x; half of that variance is shared, half varies with the condition.
        # correction_starts_at_zero: the core (W for v1, S otherwise) starts at 0; v2/v3's generated U_i and
        # V_i keep their scale, or no factor of U_i S_i V_i would ever receive a gradient
        half = math.sqrt(0.5)
        core = 0.0 if config.correction_starts_at_zero else half
        if v is APGVersion.V1:
            outputs = [Generated("W", (N, M), core / math.sqrt(M), core / math.sqrt(M))]
        elif v in (APGVersion.V2, APGVersion.V3):
            outputs = [Generated("U", (N, K), half / math.sqrt(K), half / math.sqrt(K)),
                       Generated("S", (K, K), core / math.sqrt(K), core / math.sqrt(K)),
                       Generated("V", (K, M), half / math.sqrt(M), half / math.sqrt(M))]
        else:
            outputs = [Generated("S", (K, K), core / math.sqrt(K), core / math.sqrt(K))]
        if config.generate_bias:
            outputs.append(Generated("b", (N,), 0.0, 1.0))  # a static layer's init on the normalised condition
        self.generator: nn.Module = ParameterGenerator(
            cond_dim=Dz, hidden=config.generator_hidden, outputs=outputs, norm=config.condition_norm) \
            if config.adaptive else StaticParameters(outputs=outputs)
        if v is APGVersion.V4:
            self.U = nn.Parameter(torch.randn(N, K) / math.sqrt(K))  # shared U (N, K)
            self.V = nn.Parameter(torch.randn(K, M) / math.sqrt(M))  # shared V (K, M)
        elif v is APGVersion.V5:
            self.U_l = nn.Parameter(torch.randn(N, P) / math.sqrt(P))  # U^l (N, P)
            self.U_r = nn.Parameter(torch.randn(P, K) / math.sqrt(K))  # U^r (P, K)
            self.V_l = nn.Parameter(torch.randn(K, P) / math.sqrt(P))  # V^l (K, P)
            self.V_r = nn.Parameter(torch.randn(P, M) / math.sqrt(M))  # V^r (P, M)
        # W_0 (N, M): the static full-rank path, LeCun like a static layer
        self.W0 = nn.Parameter(torch.randn(N, M) / math.sqrt(M)) if config.static_weight else None
        if self.W0 is not None and config.w0_init == "linear":
            with torch.no_grad():  # nn.Linear's own initialisation of its weight
                nn.init.kaiming_uniform_(self.W0, a=math.sqrt(5))
        self.bias = None if config.generate_bias else nn.Parameter(torch.zeros(N))  # static b (N,)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"version={self.version.value}, K={self.config.K}"
                + (f", P={self.config.P}" if self.version is APGVersion.V5 else "")
                + (", self-wise" if self.self_wise else f", cond_dim={self.cond_dim}")
                + (", + W_0 x" if self.W0 is not None else "")
                + ("" if self.config.adaptive else ", static (ablation)"))

    @property
    def reads_undropped_input(self) -> bool:
        """Whether a tower hands this layer its input before dropout as ``source`` (see :class:`MLP`)."""
        return self.self_wise and self.config.condition_before_dropout

    def _condition(self, x: Tensor, cond: Tensor | None, source: Tensor | None) -> Tensor:
        if self.self_wise:
            return x if source is None else source  # (B, M); the tower gives source when reads_undropped_input
        if cond is None:
            raise AdactrError(f"this APG layer is {self.config.condition.value}-wise and needs a condition; "
                              "the model gave none (is model.condition set?)")
        return cond  # (B, Dz)

    def generated(self, x: Tensor, cond: Tensor | None = None, source: Tensor | None = None
                  ) -> dict[str, Tensor]:
        """What the generator makes for each instance: ``{name: (B, *shape)}`` (``S`` for v4/v5).

        ``source``: a self-wise layer's input before dropout (the tower passes it); None = ``x``."""
        return self.generator(self._condition(x, cond, source))

    def diagnosed(self, x: Tensor, cond: Tensor | None = None, source: Tensor | None = None
                  ) -> dict[str, Tensor]:
        """For the adaptivity diagnostic: :meth:`generated`, plus ``"weight"``, the weight each instance gets.

        What the generator makes is not what the instance gets: with ``W_0`` the layer's weight is
        ``W_i = W_0 + U S_i V``, whose spread relative to its mean can be far smaller than ``S_i``'s (a
        correction that starts at zero has ``S`` of mean ~0 and a huge ``S`` ratio). ``"weight"`` is measured so
        that its adaptivity is exactly ``W_i``'s (std over instances ÷ rms of the mean, in Frobenius norm):

        * v1-v3: ``W_i`` itself, flattened (``(B, N M)``; v2/v3 reconstruct ``U_i S_i V_i``);
        * v4/v5: ``[vec(C_i), r]`` (``(B, K'^2 + 1)``), an isometric form: with thin QR ``U = Q_U R_U``,
          ``V^T = Q_V R_V``, ``W_i = Q_U C_i Q_V^T + W_0⊥`` where ``C_i = R_U S_i R_V^T + Q_U^T W_0 Q_V``
          and ``W_0⊥ = W_0 - Q_U Q_U^T W_0 Q_V Q_V^T`` is orthogonal to the first term, so every distance
          and norm of ``W_i`` is that of the vector, with ``r = ||W_0⊥||_F`` the constant last entry.
        """
        gen = self.generated(x, cond, source)
        return {**gen, "weight": self._weight_coordinates(gen)}

    def _weight_coordinates(self, gen: dict[str, Tensor]) -> Tensor:
        v, B = self.version, next(iter(gen.values())).shape[0]
        W0 = self.W0  # (N, M) or None
        if v in (APGVersion.V1, APGVersion.V2, APGVersion.V3):
            W = gen["W"] if v is APGVersion.V1 else torch.bmm(torch.bmm(gen["U"], gen["S"]), gen["V"])  # (B, N, M)
            return (W if W0 is None else W + W0).flatten(1)  # (B, N M)
        U, V = (self.U, self.V) if v is APGVersion.V4 else (self.U_l @ self.U_r, self.V_l @ self.V_r)  # (N, K), (K, M)
        Q_U, R_U = torch.linalg.qr(U)  # (N, k), (k, K); k = min(N, K)
        Q_V, R_V = torch.linalg.qr(V.T)  # (M, m), (m, K); m = min(M, K)
        C = R_U @ gen["S"] @ R_V.T  # (B, k, m)
        if W0 is None:
            rest = torch.zeros((), dtype=C.dtype, device=C.device)
        else:
            inner = Q_U.T @ W0 @ Q_V  # (k, m)
            C = C + inner
            rest = torch.linalg.matrix_norm(W0 - Q_U @ inner @ Q_V.T)  # ||W_0⊥||_F, ()
        return torch.cat([C.flatten(1), rest.expand(B, 1)], dim=1)  # (B, k m + 1)

    def forward(self, x: Tensor, cond: Tensor | None = None, source: Tensor | None = None) -> Tensor:
        gen = self.generated(x, cond, source)  # {name: (B, *shape)}
        if self.config.generator_l2 > 0 and penalties_active():  # check(): only with a ParameterGenerator
            add_penalty("apg_generator_l2", self.config.generator_l2 * self.generator.net.out.weight.square().sum())
        v = self.version
        if v is APGVersion.V1:
            W = gen["W"]  # (B, N, M)
            y = torch.bmm(W, x.unsqueeze(-1)).squeeze(-1)  # eq. (2): W_i x_i, (B, N)
        elif v is APGVersion.V2:
            U, S, V = gen["U"], gen["S"], gen["V"]  # (B, N, K), (B, K, K), (B, K, M)
            W = torch.bmm(torch.bmm(U, S), V)  # eq. (3): W_i = U_i S_i V_i reconstructed, (B, N, M)
            y = torch.bmm(W, x.unsqueeze(-1)).squeeze(-1)  # (B, N)
        elif v is APGVersion.V3:
            U, S, V = gen["U"], gen["S"], gen["V"]  # (B, N, K), (B, K, K), (B, K, M)
            h = torch.bmm(V, x.unsqueeze(-1))  # eq. (4): V_i x_i, (B, K, 1)
            h = torch.bmm(S, h)  # S_i (V_i x_i), (B, K, 1)
            y = torch.bmm(U, h).squeeze(-1)  # U_i (S_i (V_i x_i)), (B, N)
        else:
            S = gen["S"]  # (B, K, K)
            if v is APGVersion.V4:
                U, V = self.U, self.V
            else:
                # eq. (7), training form: one (N,P)x(P,K) and one (K,P)x(P,M) product per call, shared by
                # the batch; the served form (collapse) stores these products instead
                U, V = self.U_l @ self.U_r, self.V_l @ self.V_r  # (N, K), (K, M)
            h = x @ V.T  # eq. (6): V x_i, (B, K)
            h = torch.bmm(S, h.unsqueeze(-1)).squeeze(-1)  # S_i (V x_i), (B, K)
            y = h @ U.T  # U (S_i (V x_i)), (B, N)
        if self.W0 is not None:
            y = y + x @ self.W0.T  # + W_0 x_i, (B, N)
        b = gen["b"] if self.config.generate_bias else self.bias  # (B, N) or (N,)
        return y if b is None else y + b

    def collapse(self) -> APGLinear:
        """The served form: a v5 layer becomes the v4 layer with ``U = U^l U^r``, ``V = V^l V^r``.

        The products are computed here, once; the returned layer has parameters ``U``, ``V`` and no
        ``U_l``/``U_r``/``V_l``/``V_r``, the same generator (condition normalisation included), ``W_0`` and
        bias, and gives the same outputs. ``self`` is not changed, and no random number is drawn (the layer
        is built on the meta device, then filled). Other versions are already their served form and are
        returned as they are.
        """
        if self.version is not APGVersion.V5:
            return self
        with torch.device("meta"):
            served = APGLinear(self.in_features, self.out_features,
                               config=replace(self.config, version=APGVersion.V4), cond_dim=self.cond_dim)
        ref = self.U_l
        served = served.to_empty(device=ref.device).to(dtype=ref.dtype)
        state = {k: t for k, t in self.state_dict().items() if k not in ("U_l", "U_r", "V_l", "V_r")}
        with torch.no_grad():
            state["U"] = self.U_l @ self.U_r  # (N, K)
            state["V"] = self.V_l @ self.V_r  # (K, M)
        served.load_state_dict(state)
        served.train(self.training)
        return served


class APGMixOutput(nn.Module):
    """Mix-wise output aggregation (Section 3.1.1): one :class:`APGLinear` per condition embedding.

    ``forward(x (B, M), cond (B, k, D)) -> (B, N)``: branch j generates its parameters from
    ``cond[:, j]``; the k outputs are aggregated by concat -> static linear, mean or attention (see the
    module docstring for why this is the paper's aggregation of the parameters W_i^j).
    """

    def __init__(self, in_features: int, out_features: int, *, config: APGConfig, cond_dim: int,
                 n_conditions: int) -> None:
        super().__init__()
        if n_conditions < 1:
            raise ValueError(f"APGMixOutput needs n_conditions >= 1, got {n_conditions}")
        self.in_features, self.out_features, self.n_conditions = in_features, out_features, n_conditions
        self.aggregation = config.aggregation
        self.branches = nn.ModuleList(APGLinear(in_features, out_features, config=config, cond_dim=cond_dim)
                                      for _ in range(n_conditions))
        k, N = n_conditions, out_features
        # W_o: maps the stacked k outputs back to N (concat only)
        self.project = nn.Linear(k * N, N, bias=False) if self.aggregation is Aggregation.CONCAT else None
        self.attention = AttentionWeights(cond_dim) if self.aggregation is Aggregation.ATTENTION else None

    def _check(self, cond: Tensor | None) -> Tensor:
        if cond is None or cond.dim() != 3 or cond.shape[1] != self.n_conditions:
            got = None if cond is None else tuple(cond.shape)
            raise AdactrError(f"mix_output APG needs a (B, {self.n_conditions}, D) condition, got {got}")
        return cond

    def generated(self, x: Tensor, cond: Tensor | None = None) -> dict[str, Tensor]:
        """Each branch's generated matrices, named ``"<branch>.<name>"``."""
        return self._per_branch("generated", x, cond)

    def diagnosed(self, x: Tensor, cond: Tensor | None = None) -> dict[str, Tensor]:
        """Each branch's :meth:`APGLinear.diagnosed` tensors, named ``"<branch>.<name>"``."""
        return self._per_branch("diagnosed", x, cond)

    def _per_branch(self, method: str, x: Tensor, cond: Tensor | None) -> dict[str, Tensor]:
        cond = self._check(cond)
        return {f"{j}.{n}": t for j, b in enumerate(self.branches)
                for n, t in getattr(b, method)(x, cond[:, j]).items()}

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        cond = self._check(cond)
        ys = torch.stack([b(x, cond[:, j]) for j, b in enumerate(self.branches)], dim=1)  # (B, k, N): y^j
        if self.project is not None:
            return self.project(ys.flatten(1))  # W_o [y^0; ...; y^{k-1}], (B, N)
        if self.attention is not None:
            a = self.attention(cond)  # (B, k)
            return (a.unsqueeze(-1) * ys).sum(dim=1)  # sum_j a_j y^j, (B, N)
        return ys.mean(dim=1)  # (B, N)


class APGLayerFactory:
    """A :data:`LayerFactory` making APG layers for the condition that :class:`APGCondition` builds.

    ``cond_dim`` and ``n_conditions`` are :attr:`APGCondition.dim` and :attr:`APGCondition.n_conditions`
    (``cond_dim`` is ignored for self-wise layers). It counts the layers it makes: the i-th gets
    ``config.for_layer(i)``, so per-layer K and P follow the order in which the model builds its layers;
    :meth:`check_built` says whether the lists had one value per layer.
    """

    def __init__(self, config: APGConfig, cond_dim: int, *, n_conditions: int = 1) -> None:
        config.check()
        self.config, self.cond_dim, self.n_conditions = config, cond_dim, n_conditions
        self.built = 0

    def __call__(self, in_features: int, out_features: int) -> nn.Module:
        config = self.config.for_layer(self.built)
        self.built += 1
        if config.condition is ConditionMode.MIX_OUTPUT:
            return APGMixOutput(in_features, out_features, config=config, cond_dim=self.cond_dim,
                                n_conditions=self.n_conditions)
        return APGLinear(in_features, out_features, config=config, cond_dim=self.cond_dim)

    def check_built(self) -> None:
        n = self.config.per_layer
        if n and n != self.built:
            raise ConfigError(f"apg.rank / apg.overparam_dim list {n} values, one per APG layer, but the model "
                              f"has {self.built} APG layers")


def apg_layer_factory(config: APGConfig, cond_dim: int, *, n_conditions: int = 1) -> APGLayerFactory:
    """The :class:`APGLayerFactory` for ``config`` (kept as the factory's public constructor)."""
    return APGLayerFactory(config, cond_dim, n_conditions=n_conditions)


# ---- the condition builder -------------------------------------------------------------------------

class APGCondition(nn.Module):
    """The condition builder: ``forward(batch, emb (B, F, D)) -> z`` once per batch (Section 3.1.1).

    Returns (B, k D) for group-wise and mix_input concat, (B, D) for mix_input mean / attention,
    (B, k, D) for mix_output and ``None`` for self-wise (each layer uses its own input).
    :attr:`dim` and :attr:`n_conditions` are what :func:`apg_layer_factory` needs.
    """

    def __init__(self, *, layout: FieldLayout, config: APGConfig, embedding_dim: int) -> None:
        super().__init__()
        config.check()
        self.mode, self.aggregation = config.condition, config.aggregation
        names = config.condition_fields
        if self.mode in (ConditionMode.MIX_INPUT, ConditionMode.MIX_OUTPUT) and not names:
            names = layout.names
        idx = []
        for name in names:
            try:
                idx.append(layout.index(name))
            except AdactrError:
                raise ConfigError(f"apg.condition_fields: unknown field {name!r}; fields are: "
                                  f"{', '.join(layout.names)}") from None
        self.fields = tuple(names)
        # derived from the config and the layout: not part of the state_dict
        self.index: Tensor
        self.register_buffer("index", torch.tensor(idx, dtype=torch.long), persistent=False)  # (k,)
        k, D = len(idx), embedding_dim
        self.attention = AttentionWeights(D) if (
            self.mode is ConditionMode.MIX_INPUT and self.aggregation is Aggregation.ATTENTION) else None
        if self.mode is ConditionMode.SELF:
            self.dim, self.n_conditions = 0, 0
        elif self.mode is ConditionMode.MIX_OUTPUT:
            self.dim, self.n_conditions = D, k
        elif self.mode is ConditionMode.MIX_INPUT and self.aggregation is not Aggregation.CONCAT:
            self.dim, self.n_conditions = D, 1
        else:
            self.dim, self.n_conditions = k * D, 1

    def extra_repr(self) -> str:
        return f"mode={self.mode.value}, fields={list(self.fields)}, dim={self.dim}"

    def forward(self, batch: Batch, emb: Tensor) -> Tensor | None:
        if self.mode is ConditionMode.SELF:
            return None
        z = emb.index_select(1, self.index)  # (B, k, D): the condition embeddings z^j
        if self.mode is ConditionMode.MIX_OUTPUT:
            return z  # (B, k, D)
        if self.mode is ConditionMode.MIX_INPUT and self.aggregation is Aggregation.MEAN:
            return z.mean(dim=1)  # (B, D)
        if self.attention is not None:
            return (self.attention(z).unsqueeze(-1) * z).sum(dim=1)  # sum_j a_j z^j, (B, D)
        return z.flatten(1)  # (B, k D)
