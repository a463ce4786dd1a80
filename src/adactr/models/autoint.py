"""AutoInt (Song et al., "AutoInt: Automatic Feature Interaction Learning via Self-Attentive Neural Networks",
CIKM 2019): L interacting layers of multi-head self-attention over the fields, then the output layer.

    Batch ──FieldEmbedding──> e (B, M, d) ──[MultiHeadSelfAttention] x L──> e^Res (B, M, H d')
                                                          ──flatten──Linear──> logit      (eq. 10 w/o σ)
    AutoInt+ (``autoint_plus``):  e ──flatten──MLP(layer)──> logit, summed with the one above

Each interacting layer is eqs. 5-9 (see :class:`~adactr.nn.interaction.MultiHeadSelfAttention`): plain
inner-product attention and a ``W_Res`` residual followed by ReLU. The first layer maps d -> H d', the
others H d' -> H d'. AutoInt+ sums the two logits, as the authors' code does (``self.out += self.y_dense``).

Without AutoInt+ the model has no MLP tower, so a layer factory is an error (as for LR and FM) rather than
a silent no-op.
"""

from __future__ import annotations

from torch import Tensor, nn

from adactr.data.schema import FieldLayout
from adactr.data.tensors import Batch
from adactr.errors import ConfigError
from adactr.models.base import CTRModel, tower
from adactr.models.config import ModelConfig
from adactr.nn.embedding import FieldEmbedding
from adactr.nn.interaction import MultiHeadSelfAttention
from adactr.nn.mlp import LayerFactory, Linear


class AutoInt(CTRModel):
    def __init__(self, *, layout: FieldLayout, config: ModelConfig, layer: LayerFactory = Linear) -> None:
        super().__init__()
        if config.attention_layers <= 0:
            raise ConfigError(f"model 'autoint' needs attention_layers > 0, got {config.attention_layers}")
        if not config.autoint_plus and layer is not Linear:
            raise ConfigError("model 'autoint' has no MLP tower unless autoint_plus is true, "
                              "so a layer factory cannot be applied to it")
        M, d = layout.n_fields, config.embedding_dim
        H, d_head = config.attention_heads, config.attention_dim
        self.embedding = FieldEmbedding(layout=layout, dim=d, init_std=config.embedding_init_std)
        self.interacting = nn.ModuleList(
            MultiHeadSelfAttention(input_dim=d if i == 0 else H * d_head, head_dim=d_head, heads=H)
            for i in range(config.attention_layers))
        self.fc = nn.Linear(M * H * d_head, 1)  # eq. 10: w, b
        self.tower = tower(input_dim=M * d, config=config, layer=layer) if config.autoint_plus else None

    def forward(self, batch: Batch) -> Tensor:
        emb = self.embedding(batch)  # (B, M, d)
        cond = self.make_condition(batch, emb)
        e = emb
        for layer in self.interacting:
            e = layer(e)  # (B, M, H d')
        y = self.fc(e.flatten(1))  # (B, M H d') -> (B, 1)
        if self.tower is not None:
            y = y + self.tower(emb.flatten(1), cond)  # AutoInt+: (B, 1)
        return y.squeeze(-1)  # (B,)
