"""Mutation check: plant plausible one-line bugs and make sure the test suite catches every one.

    python tests/mutations.py              # every mutation, a table of caught / missed (exit 1 if any missed)
    python tests/mutations.py --list       # the mutations and the tests each runs
    python tests/mutations.py --only fm-no-half,deepfm-no-fm

Each mutation replaces one exact piece of source (it must occur exactly once, or the mutation is reported
"stale" and the check fails: when the code moves, the mutation must be moved with it). The repository's
``src/`` and ``tests/`` are copied to a temporary directory once; each mutation is applied to the copy,
the tests it names run there (``PYTHONPATH`` points at the copy, so the installed package is not used),
and the file is restored. A mutation is *caught* when those tests fail. A baseline run of every named
test file without any mutation must pass first, so a "caught" is never a test that fails anyway.

Adding a model family adds its mutations here: at least the bug that would turn it silently into another
model (a dropped term, a wrong axis, an input that should be ``x_0``). The list below is the record of the
bugs the suite is known to catch.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Test files (or node ids) that the mutations run; the baseline runs each once, unmutated.
FORMULAS = "tests/test_formulas.py"
BLOCKS = "tests/test_blocks.py"
BACKBONES = "tests/test_backbones.py"
MODELS_T = "tests/test_models.py"
APG = "tests/test_apg.py"
METRICS = "tests/test_metrics.py"
ENCODE = "tests/test_encode.py"
TRAINER = "tests/test_trainer.py"
ADAPTIVITY = "tests/test_adaptivity.py"
FTRL_T = "tests/test_ftrl.py"
PIN = "tests/test_pin.py"
MULTIDOMAIN = "tests/test_multidomain.py"
HMOE = "tests/test_hmoe.py"
MD_FORMULAS = "tests/test_formulas.py::test_multidomain_model_equals_its_formula"
ADASPARSE = "tests/test_adasparse.py"
AS_FORMULAS = "tests/test_formulas.py::test_adasparse_backbones_equal_the_formula_and_so_does_the_served_form"
MAML_T = "tests/test_maml.py"
BENCH_CACHE = "tests/test_benchmarks.py::test_parallel_grid_equals_serial_and_the_cache_is_reused"


@dataclass(frozen=True)
class Mutation:
    name: str
    path: str  # relative to the repository root
    old: str  # must occur exactly once in the file
    new: str
    tests: tuple[str, ...]
    why: str  # the bug, in words


MUTATIONS: tuple[Mutation, ...] = (
    # ---- data: the embedding layout and the encoder ---------------------------------------------------
    Mutation("offsets-not-cumulative", "src/adactr/nn/embedding.py",
             'self.register_buffer("cat_offsets", offsets[:n_cat].clone(), persistent=False)',
             'self.register_buffer("cat_offsets", torch.tensor([0] + sizes[:n_cat - 1]), persistent=False)',
             (FORMULAS, BLOCKS), "each field offset by the previous field's size, not the sum of all earlier"),
    Mutation("seq-mean-over-padding", "src/adactr/nn/embedding.py",
             "e = e / mask.sum(1, keepdim=True).clamp(min=1)", "e = e / mask.shape[1]",
             (FORMULAS, BLOCKS), "mean pooling divides by the padded length"),
    Mutation("seq-no-offset", "src/adactr/nn/embedding.py",
             "e = (self.lookup(seq + off) * mask)", "e = (self.lookup(seq) * mask)",
             (FORMULAS, BLOCKS), "sequence items read the first field's rows"),
    Mutation("num-value-ignored", "src/adactr/nn/embedding.py",
             "parts.append(batch.num.unsqueeze(-1) * self.num_weight)",
             "parts.append(self.num_weight.expand(batch.num.shape[0], -1, -1))",
             (FORMULAS, BLOCKS), "a numerical field's vector is not scaled by its value"),
    Mutation("log-bucket-square-outside", "src/adactr/data/encode.py",
             "np.floor(np.log(np.where(big, v, 3.0)) ** 2)", "np.floor(np.log(np.where(big, v, 3.0))) ** 2",
             (ENCODE,), "Criteo log bucket floor(ln x)^2 instead of floor(ln(x)^2)"),
    Mutation("standardise-without-std", "src/adactr/data/encode.py",
             "((x - f.mean) / f.std)", "(x - f.mean)",
             (ENCODE,), "numerical columns centred but not scaled"),
    Mutation("min-count-strict", "src/adactr/data/encode.py",
             'pl.col("n") >= min_count', 'pl.col("n") > min_count',
             (ENCODE,), "values seen exactly min_count times go to OOV"),
    Mutation("unseen-as-missing", "src/adactr/data/encode.py",
             "default=OOV", "default=MISSING",
             (ENCODE,), "unseen values share the missing slot instead of OOV"),
    # ---- nn: interaction blocks, tower, APG -----------------------------------------------------------
    Mutation("fm-no-half", "src/adactr/nn/interaction.py",
             "return (0.5 * (torch.linalg.vecdot(s, s) - sq)).unsqueeze(1)",
             "return (torch.linalg.vecdot(s, s) - sq).unsqueeze(1)",
             (FORMULAS, BLOCKS), "FM pairwise term counts every pair twice"),
    Mutation("fm-grad-sign", "src/adactr/nn/interaction.py",
             "emb, g.view(-1, 1, 1), value=-1)", "emb, g.view(-1, 1, 1), value=1)",
             (BLOCKS,), "FM's hand-written gradient adds e_f instead of subtracting it"),
    Mutation("first-order-no-bias", "src/adactr/nn/interaction.py",
             "return self.embedding(batch).sum(dim=1) + self.bias", "return self.embedding(batch).sum(dim=1)",
             (FORMULAS, BLOCKS), "the linear term loses w_0"),
    Mutation("cross-v2-no-residual", "src/adactr/nn/interaction.py",
             "return x0 * self.W(x, cond) + x  # (B, d)", "return x0 * self.W(x, cond)  # (B, d)",
             (FORMULAS, BLOCKS), "DCNv2 eq. 1 without + x_l"),
    Mutation("cross-v1-x-for-x0", "src/adactr/nn/interaction.py",
             "return x0 * self.w(x, cond) + self.b + x", "return x * self.w(x, cond) + self.b + x",
             (FORMULAS, BACKBONES), "DCN eq. 3 with x_l x_l^T w instead of x_0 x_l^T w"),
    Mutation("dcn-mix-gate-axis", "src/adactr/nn/interaction.py",
             "G = torch.softmax(self.gate(x), dim=-1)", "G = torch.softmax(self.gate(x), dim=0)",
             (FORMULAS, BLOCKS), "DCN-Mix gates normalised over the batch instead of the experts"),
    Mutation("opnn-mean-not-sum", "src/adactr/nn/interaction.py",
             "s = emb.sum(dim=1)  # (B, D): f_Σ", "s = emb.mean(dim=1)  # (B, D): f_Σ",
             (FORMULAS, BACKBONES), "OPNN superposition averaged instead of summed"),
    Mutation("cin-next-layer-gets-pooled-half", "src/adactr/nn/interaction.py",
             "x = xk[:, :h_k - n_out] if n_out < h_k else xk  # split-half: the first half goes on",
             "x = xk[:, n_out:] if n_out < h_k else xk  # split-half: the first half goes on",
             (FORMULAS, BACKBONES), "split-half CIN feeds the next layer the half it pools, not the other half"),
    Mutation("cin-mean-pool", "src/adactr/nn/interaction.py",
             "pooled.append(xk[:, h_k - n_out:].sum(dim=2))", "pooled.append(xk[:, h_k - n_out:].mean(dim=2))",
             (FORMULAS, BACKBONES), "CIN feature maps mean-pooled over D instead of eq. 7's sum"),
    Mutation("cin-x-for-x0", "src/adactr/nn/interaction.py",
             "z = (x.unsqueeze(2) * x0.unsqueeze(1)).reshape(B, h_prev * m, D)",
             "z = (x.unsqueeze(2) * x.unsqueeze(1)).reshape(B, h_prev * m, D)",
             (FORMULAS, BACKBONES), "CIN crosses X^{k-1} with itself instead of with X^0 (same as X^0 in layer 1)"),
    Mutation("senet-max-pool", "src/adactr/nn/interaction.py",
             "Z = emb.mean(dim=2)  # (B, F): squeeze", "Z = emb.amax(dim=2)  # (B, F): squeeze",
             (FORMULAS, BACKBONES), "SENET squeeze by max pooling (image SENet) instead of the paper's mean"),
    Mutation("bilinear-each-right-field", "src/adactr/nn/interaction.py",
             'torch.einsum("bpd,pde->bpe", vi, self.W[self.row])',
             'torch.einsum("bpd,pde->bpe", vi, self.W[self.col - 1])',
             (FORMULAS, BACKBONES), "Field-Each bilinear uses the right field's W"),
    Mutation("attention-wrong-axis", "src/adactr/nn/interaction.py",
             "alpha = torch.softmax(psi, dim=-1)  # (B, H, F, F): over k",
             "alpha = torch.softmax(psi, dim=-2)  # (B, H, F, F): over k",
             (FORMULAS, BACKBONES), "attention normalised over the queries instead of the keys"),
    Mutation("attention-scale-d", "src/adactr/nn/interaction.py",
             "psi = psi / math.sqrt(d)", "psi = psi / d",
             (FORMULAS, BACKBONES), "scaled dot product divided by d' instead of sqrt(d')"),
    Mutation("attention-no-residual", "src/adactr/nn/interaction.py",
             "out = out + self.W_Res(e)", "out = self.W_Res(e)",
             (FORMULAS, BACKBONES), "AutoInt eq. 9 keeps only the residual"),
    Mutation("bn-after-activation", "src/adactr/nn/mlp.py",
             "nn.Sequential(*([nn.BatchNorm1d(o)] if batch_norm else []), activation.make())",
             "nn.Sequential(activation.make(), *([nn.BatchNorm1d(o)] if batch_norm else []))",
             (FORMULAS,), "batch norm after the activation"),
    Mutation("onednn-grad-untransposed", "src/adactr/nn/mlp.py",
             "gx = _onednn_linear(g, weight.t().contiguous(), None)",
             "gx = _onednn_linear(g, weight.contiguous(), None)",
             (BLOCKS,), "the input gradient multiplies by W instead of W^T (silent for square layers)"),
    Mutation("apg-collapse-drops-bias", "src/adactr/nn/apg.py",
             "served.load_state_dict(state)",
             'served.load_state_dict({**state, **{k: torch.zeros_like(t) for k, t in state.items() if k == "bias"}})',
             (FORMULAS, APG), "the served APG layer loses its static bias"),
    Mutation("apg-s-transposed", "src/adactr/nn/apg.py",
             "h = torch.bmm(S, h.unsqueeze(-1)).squeeze(-1)  # S_i (V x_i), (B, K)",
             "h = torch.bmm(S.transpose(1, 2), h.unsqueeze(-1)).squeeze(-1)  # S_i (V x_i), (B, K)",
             (FORMULAS, APG), "APG v4/v5 apply S_i^T"),
    Mutation("apg-group-first-fields", "src/adactr/nn/apg.py",
             "z = emb.index_select(1, self.index)", "z = emb[:, :len(self.index)]",
             (FORMULAS, APG), "group-wise condition takes the first k fields, not the named ones"),
    Mutation("apg-condition-not-normalised", "src/adactr/nn/apg.py",
             "flat = self.net(self.norm(z))", "flat = self.net(z)",
             (FORMULAS, ADAPTIVITY), "the generator sees the raw condition: starved by small embeddings"),
    Mutation("apg-norm-default-eps", "src/adactr/nn/apg.py",
             "NORM_EPS = 1e-12", "NORM_EPS = 1e-5",
             (ADAPTIVITY,), "LayerNorm's default eps swamps a condition of rms 1e-4"),
    Mutation("apg-hidden-mean-not-shared", "src/adactr/nn/apg.py",
             "out.bias.copy_(torch.randn(sum(self.sizes)) * shared - W @ h_mean)",
             "out.bias.copy_(torch.randn(sum(self.sizes)) * shared)",
             (ADAPTIVITY,), "the hidden layers' mean output counted as instance-varying at initialisation"),
    Mutation("apg-static-weight-dropped", "src/adactr/nn/apg.py",
             "y = y + x @ self.W0.T  # + W_0 x_i, (B, N)", "y = y  # + W_0 x_i, (B, N)",
             (FORMULAS,), "model.apg.static_weight builds W_0 but never uses it"),
    Mutation("apg-self-condition-after-dropout", "src/adactr/nn/apg.py",
             "return self.self_wise and self.config.condition_before_dropout", "return False",
             (APG,), "condition_before_dropout is ignored: a self-wise layer generates from the dropped-out input"),
    Mutation("mlp-source-is-dropped-input", "src/adactr/nn/mlp.py",
             "return layer(x, cond, source) if", "return layer(x, cond, x) if",
             (APG,), "the tower hands a self-wise layer its dropped-out input as the undropped one"),
    Mutation("bench-cache-trusts-stale-settings", "benchmarks/accuracy.py",
             "if stored is None:", "if True:",
             (BENCH_CACHE,), "a benchmark cache entry trained under an old default is reused as if current"),
    Mutation("bench-cache-new-option-is-stale", "benchmarks/accuracy.py",
             "    if not changed:", "    if stored != config:",
             (BENCH_CACHE,), "every cache entry is retrained when the library gains an option whose default "
             "keeps the old behaviour"),
    Mutation("apg-weight-forgets-w0-outside-the-span", "src/adactr/nn/apg.py",
             "return torch.cat([C.flatten(1), rest.expand(B, 1)], dim=1)",
             "return torch.cat([C.flatten(1), 0 * rest.expand(B, 1)], dim=1)",
             (ADAPTIVITY,), "the weight an instance gets leaves out W_0's part outside U's and V's span"),
    Mutation("apg-generator-l2-rate-ignored", "src/adactr/nn/apg.py",
             "self.config.generator_l2 * self.generator.net.out.weight.square().sum()",
             "self.generator.net.out.weight.square().sum()",
             (APG,), "the generator's L2 penalty is added without its rate"),
    Mutation("adaptivity-not-centred", "src/adactr/nn/adaptivity.py",
             "var = max(self.sq / self.n - mean_sq, 0.0)", "var = self.sq / self.n",
             (ADAPTIVITY,), "the adaptivity diagnostic forgets to subtract the mean (a static part looks adaptive)"),
    Mutation("adaptivity-domain-unweighted", "src/adactr/nn/adaptivity.py",
             "between = sum(n_d * float((s_d / n_d - mean).square().sum())",
             "between = sum(self.n / len(self.by_domain) * float((s_d / n_d - mean).square().sum())",
             (ADAPTIVITY,), "between-domain spread not weighted by the domains' sizes"),
    # ---- models ---------------------------------------------------------------------------------------
    Mutation("deepfm-no-fm", "src/adactr/models/deepfm.py",
             "y = self.first_order(batch) + self.fm(emb) + self.tower(emb.flatten(1), cond)",
             "y = self.first_order(batch) + self.tower(emb.flatten(1), cond)",
             (FORMULAS,), "DeepFM without its FM term is a wide & deep model"),
    Mutation("wdl-no-wide", "src/adactr/models/wdl.py",
             "return (self.wide(batch) + self.tower(emb.flatten(1), cond)).squeeze(-1)",
             "return self.tower(emb.flatten(1), cond).squeeze(-1)",
             (FORMULAS,), "Wide & Deep without the wide part is DNN"),
    Mutation("dcn-no-cross", "src/adactr/models/dcn.py",
             "x = self.cross(x0, cond)  # (B, d)", "x = x0  # (B, d)",
             (FORMULAS,), "DCN's cross network bypassed"),
    Mutation("dcnv2-parallel-tower-on-cross", "src/adactr/models/dcnv2.py",
             "h = self.tower(x0, cond)  # (B, h_L)", "h = self.tower(x, cond)  # (B, h_L)",
             (FORMULAS,), "parallel DCNv2 feeds the cross output to the deep tower (half stacked)"),
    Mutation("fibinet-q-from-e", "src/adactr/models/fibinet.py",
             "q = self.bilinear_v(V).flatten(1)", "q = self.bilinear_v(E).flatten(1)",
             (FORMULAS,), "FiBiNET's second bilinear layer ignores the SENET re-weighting"),
    Mutation("difm-bit-only", "src/adactr/models/difm.py",
             "m = m_vec + m_bit  # (B, F): m_x", "m = m_bit  # (B, F): m_x",
             (FORMULAS,), "DIFM without its vector-wise factor"),
    Mutation("difm-w-not-reweighted", "src/adactr/models/difm.py",
             "linear = self.first_order.bias + (m * w).sum(dim=1, keepdim=True)",
             "linear = self.first_order.bias + w.sum(dim=1, keepdim=True)",
             (FORMULAS,), "DIFM re-weights the embeddings but not the first-order weights"),
    Mutation("deepcrossing-no-residual", "src/adactr/models/deepcrossing.py",
             "return self.post(x + self.W1(h, cond))", "return self.post(self.W1(h, cond))",
             (FORMULAS, BACKBONES), "DeepCrossing's units lose the shortcut: a plain MLP"),
    Mutation("xdeepfm-no-linear", "src/adactr/models/xdeepfm.py",
             "y = self.first_order(batch) + self.cin_out(self.cin(emb))", "y = self.cin_out(self.cin(emb))",
             (FORMULAS, BACKBONES), "xDeepFM without eq. 9's linear part"),
    Mutation("pnn-star-inner-only", "src/adactr/models/pnn.py",
             "self.outer = OuterProduct(embedding_dim=M) if product is not Product.INNER else None",
             "self.outer = OuterProduct(embedding_dim=M) if product is Product.OUTER else None",
             (FORMULAS, BACKBONES), "PNN* drops its outer-product signal and is IPNN"),
    Mutation("autoint-plus-no-tower", "src/adactr/models/autoint.py",
             "y = y + self.tower(emb.flatten(1), cond)  # AutoInt+: (B, 1)", "y = y  # AutoInt+: (B, 1)",
             (FORMULAS,), "AutoInt+ reports plain AutoInt"),
    # ---- PIN / DynInt ---------------------------------------------------------------------------------
    Mutation("pin-w-times-x-not-x0", "src/adactr/nn/pin.py",
             "return x * (self.W @ x0) + x  # (F', F')", "return x * (self.W @ x) + x  # (F', F')",
             (FORMULAS, PIN), "a PIN layer mixes X_{l-1} instead of X_0 (the degree doubles per layer)"),
    Mutation("pin-no-residual", "src/adactr/nn/pin.py",
             "return x * (self.W @ x0) + x  # (F', F')", "return x * (self.W @ x0)  # (F', F')",
             (FORMULAS, PIN), "eq. 3 without the residual X_{l-1}"),
    Mutation("pin-field-major-subspaces", "src/adactr/nn/pin.py",
             "return x.reshape(B, F, h, D // h).transpose(1, 2).reshape(B, h * F, D // h)",
             "return x.reshape(B, h * F, D // h)",
             (FORMULAS, PIN), "sub-spaces split field-major, not in the official subspace-major order"),
    Mutation("da-gate-sigmoid-not-2x", "src/adactr/nn/pin.py",
             '{"gate": 2.0 * torch.sigmoid(', '{"gate": torch.sigmoid(',
             (FORMULAS, PIN), "DA's gate without the x2: it starts at 0.5, not 1"),
    Mutation("generator-sees-x0-gradient", "src/adactr/nn/pin.py",
             "return x0.detach().flatten(1)", "return x0.flatten(1)",
             (PIN,), "X_0 receives gradients from the generator nets (the paper blocks them)"),
    Mutation("dgp-sigma-no-offset", "src/adactr/nn/pin.py",
             '{"sigma": 1.0 + self.sigma_net(', '{"sigma": self.sigma_net(',
             (FORMULAS, PIN), "DGP's σ without the 1 offset: the layer no longer starts as U V^T"),
    Mutation("dwp-paper-offset", "src/adactr/nn/pin.py",
             "self.offset = 1.0 / math.sqrt(self.K)", "self.offset = 1.0 / self.K",
             (FORMULAS, PIN), "the paper's printed 1/K offset: G starts at 1/K, not 1"),
    Mutation("dwp-u-v-swapped", "src/adactr/nn/pin.py",
             "u, v = uv.view(-1, 2, self.K, self.rows).unbind(1)", "v, u = uv.view(-1, 2, self.K, self.rows).unbind(1)",
             (FORMULAS,), "DWP scales W's columns by u and rows by v (G transposed)"),
    Mutation("orthogonal-penalty-sign", "src/adactr/nn/pin.py",
             'add_penalty("orthogonal", self.orthogonal * (pairwise_abs_cosine(self.U.T)',
             'add_penalty("orthogonal", -self.orthogonal * (pairwise_abs_cosine(self.U.T)',
             (PIN,), "eq. 11's printed sign: the loss rewards non-orthogonal U, V"),
    Mutation("penalties-not-in-loss", "src/adactr/train/trainer.py",
             "        loss = loss + term\n", "        loss = loss + 0 * term\n",
             (PIN,), "the trainer drops the terms a model adds to the loss"),
    Mutation("pin-output-over-d-not-f", "src/adactr/models/xdeepint.py",
             "return self.out(xL.sum(-1)).squeeze(-1)", "return self.out(xL.mean(-1)).squeeze(-1)",
             (FORMULAS, PIN), "eq. 2 averages the embedding columns instead of summing them"),
    # ---- metrics --------------------------------------------------------------------------------------
    Mutation("auc-ties-first-rank", "src/adactr/train/metrics.py",
             "rank2 = runs + run_end + 1 - 2 * group_first", "rank2 = 2 * runs + 2 - 2 * group_first",
             (METRICS,), "tied scores get the first rank of their run, not the average"),
    Mutation("gauc-unweighted", "src/adactr/train/metrics.py",
             "return float((w * aucs[both]).sum() / w.sum())", "return float(aucs[both].mean())",
             (METRICS,), "GAUC as a plain mean over groups"),
    Mutation("relaimp-no-half", "src/adactr/train/metrics.py",
             "return ((auc_model - 0.5) / (auc_base - 0.5) - 1.0) * 100.0",
             "return (auc_model / auc_base - 1.0) * 100.0",
             (METRICS,), "RelaImp without subtracting the random guess's 0.5"),
    Mutation("logloss-from-probabilities", "src/adactr/train/metrics.py",
             "F.binary_cross_entropy_with_logits(logits.to(torch.float64), y.to(torch.float64))",
             "F.binary_cross_entropy(torch.sigmoid(logits.to(torch.float32)).double(), y.to(torch.float64))",
             (METRICS,), "log loss from float32 probabilities: log(0) for confident logits"),
    Mutation("per-domain-count-all", "src/adactr/train/metrics.py",
             '"count": int(y.numel()),', '"count": int(mask.numel()),',
             (METRICS,), "each domain's count is the whole split"),
    # ---- multi-domain models ----------------------------------------------------------------------------
    Mutation("domain-tower-output-shared", "src/adactr/nn/multidomain.py",
             "output_dim=1, output_layer=per_domain)", "output_dim=1)",
             (MD_FORMULAS,), "the towers' output layer shared by every domain (only the hidden layers per domain)"),
    Mutation("gate-softmax-over-batch", "src/adactr/nn/multidomain.py",
             "        return torch.softmax(self.linear(x, cond), dim=-1)  # (B, n)",
             "        return torch.softmax(self.linear(x, cond), dim=0)  # (B, n)",
             (MD_FORMULAS,), "MMoE / PLE gates normalised over the batch instead of over the experts"),
    Mutation("ple-shared-experts-on-domain-path", "src/adactr/models/ple.py",
             "[e(x_s, groups) for e in self.shared]", "[e(x_d, groups) for e in self.shared]",
             (MD_FORMULAS,), "PLE's shared experts fed the domain path's input above the first level"),
    Mutation("ple-no-shared-gate", "src/adactr/models/ple.py",
             "self.shared_gate = None if last else Gate(", "self.shared_gate = None if True else Gate(",
             (MD_FORMULAS,), "PLE without the shared module's gate: every level reads the embeddings (CGC x L)"),
    Mutation("pn-batch-statistics-in-eval", "src/adactr/nn/multidomain.py",
             "        if self.training:  # each row's own domain's batch statistics",
             "        if True:  # each row's own domain's batch statistics",
             (MD_FORMULAS, MULTIDOMAIN), "STAR's PN normalises by the batch in evaluation too (Scenario-Wise-Rec)"),
    Mutation("pn-domain-affine-dropped", "src/adactr/nn/multidomain.py",
             "return (self.gamma * gamma_p) * (x - mu)", "return self.gamma * (x - mu)",
             (MD_FORMULAS, MULTIDOMAIN), "PN without the domain's own γ_p"),
    Mutation("lazy-adam-steps-absent-domains", "src/adactr/train/lazy_adam.py",
             "                if not g.is_sparse:  # every row\n",
             "                if g.is_sparse:\n                    g = p.grad = g.to_dense()\n"
             "                if not g.is_sparse:  # every row\n",
             ("tests/test_domain.py",), "the lazy step densifies the gradient: absent domains' rows and moments "
             "move (dense Adam)"),
    Mutation("pn-stats-of-the-whole-batch", "src/adactr/nn/multidomain.py",
             "mean = x.new_zeros(R, C).index_add(0, d, x) / n.clamp_min(1).unsqueeze(1)  # (R, C)",
             "mean = x.mean(0).expand(R, C)  # (R, C)",
             (MULTIDOMAIN,), "PN's training mean over the mixed batch, not per domain"),
    Mutation("hmoe-no-stop-gradient", "src/adactr/models/hmoe.py",
             "@torch.no_grad()\ndef every_domain_logits(", "def every_domain_logits(",
             (HMOE,), "HMoE without task-constrained back-propagation: a row's loss trains every domain's tower"),
    Mutation("hmoe-mix-logits", "src/adactr/models/hmoe.py",
             "return (torch.logsumexp(log_w + F.logsigmoid(z), dim=1)\n"
             "            - torch.logsumexp(log_w + F.logsigmoid(-z), dim=1))",
             "return (log_w.exp() * z).sum(1)",
             (MD_FORMULAS, HMOE), "HMoE mixing the domains' logits, not their probabilities (not the label space)"),
    Mutation("star-no-aux", "src/adactr/models/star.py",
             "return (s_m + s_a).squeeze(-1)", "return s_m.squeeze(-1)",
             (MD_FORMULAS,), "STAR without its auxiliary network's logit"),
    # ---- AdaSparse -------------------------------------------------------------------------------------
    Mutation("adasparse-sign-not-step", "src/adactr/nn/adasparse.py",
             "return (x > 0).to(x.dtype)", "return torch.sign(x)",
             (ADASPARSE, AS_FORMULAS), "the public code's sign(): -1 below ε, so a pruned neuron is negated"),
    Mutation("adasparse-no-straight-through", "src/adactr/nn/adasparse.py",
             "    def backward(ctx, g: Tensor) -> Tensor:\n        return g",
             "    def backward(ctx, g: Tensor) -> Tensor:\n        return torch.zeros_like(g)",
             (ADASPARSE,), "Binarization's step with its true (zero) gradient: the pruner never learns"),
    Mutation("adasparse-penalty-inside-band", "src/adactr/nn/adasparse.py",
             "lam = torch.where(inside, torch.zeros_like(r_d), self.lambda_hat.value * gap.detach())",
             "lam = self.lambda_hat.value * gap.detach()",
             (ADASPARSE,), "eq. (10) without its band: the regulariser pulls to r even inside [r_min, r_max]"),
    Mutation("schedule-not-saved", "src/adactr/nn/schedule.py",
             'self.register_buffer("value", torch.tensor(float(start)))',
             'self.register_buffer("value", torch.tensor(float(start)), persistent=False)',
             (ADASPARSE,), "α and λ̂ not in the state_dict: --resume restarts them (the public code's plain attribute)"),
    Mutation("schedule-epochs-ignored", "src/adactr/nn/schedule.py",
             "self.steps = max(1, round(self.epochs * steps_per_epoch))", "pass",
             (ADASPARSE,), "schedule_epochs set but the horizon stays schedule_steps (a run ends before it)"),
    Mutation("adasparse-pruner-reads-dropped-input", "src/adactr/nn/adasparse.py",
             "pi = self.factors(x if source is None else source, cond)  # (B, N_l)\n",
             "pi = self.factors(x, cond)  # (B, N_l)\n",
             (ADASPARSE,), "pruner_before_dropout is ignored in training: the pruner reads the dropped-out h^l"),
    Mutation("adasparse-domain-pruner-reads-input", "src/adactr/nn/adasparse.py",
             'return self.config.pruner_input == "both"', "return True",
             (ADASPARSE,), "pruner_input=domain still reads h^l: the factors vary within a domain"),
    # ---- train ----------------------------------------------------------------------------------------
    Mutation("keep-last-not-best", "src/adactr/train/trainer.py",
             "model.load_state_dict(best_state)", "pass",
             (TRAINER,), "early stopping keeps the last epoch's weights instead of the best"),
    Mutation("no-lr-decay", "src/adactr/train/trainer.py",
             'g["lr"] = max(g["lr"] * cfg.lr_decay, cfg.min_lr)', 'g["lr"] = g["lr"]',
             (TRAINER,), "reduce-on-plateau never reduces"),
    Mutation("embedding-l2-to-dense", "src/adactr/train/trainer.py",
             "lr=cfg.lr, l2=cfg.embedding_l2,", "lr=cfg.lr, l2=cfg.dense_l2,",
             (TRAINER,), "the embedding group gets the dense L2"),
    Mutation("maml-query-at-meta-weights", "src/adactr/train/maml.py",
             "at = fast  # first-order MAML", "at = start  # first-order MAML",
             (MAML_T,), "the query loss taken at the meta weights, not the adapted ones: the inner loop does nothing"),
    Mutation("maml-query-is-support", "src/adactr/train/maml.py",
             "tasks.append((d, seg[:n - n_query], seg[n - n_query:]))", "tasks.append((d, seg[:n - n_query], seg))",
             (MAML_T,), "a domain's support rows enter its query loss too"),
    Mutation("maml-finetune-on-another-domain", "src/adactr/train/maml.py",
             "mine = order[ends[d] - n:ends[d]]", "mine = order[:n]",
             (MAML_T,), "every domain is fine-tuned for serving on the first domain's train rows, not its own"),
    Mutation("maml-one-row-sets-with-batch-norm", "src/adactr/train/maml.py",
             "return 2 if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()) else 1",
             "return 1", (MAML_T,), "a batch-norm model's tasks may have a one-row support or query set (torch refuses "
             "its batch statistics; ml1m-fine's +MAML runs failed there)"),
    Mutation("maml-rows-weights-equal", "src/adactr/train/maml.py",
             "weight = n_query / n_query.sum()", "weight = torch.ones_like(n_query) / len(n_query)",
             (MAML_T,), "task_weight=rows weighs every task equally (a 2-row query set as much as an 800-row one)"),
    Mutation("maml-running-norm-ignored", "src/adactr/train/maml.py",
             "            m.eval()\n", "            pass\n",
             (MAML_T,), "norm_stats=running still normalises a task with its own rows' statistics"),
    # ---- FTRL / GroupLasso-FTRL -----------------------------------------------------------------------
    Mutation("gftrl-threshold-without-sqrt-d", "src/adactr/train/ftrl.py",
             "threshold = l1 * math.sqrt(z.shape[1])", "threshold = l1",
             (FTRL_T,), "G-FTRL zeroes a row below λ1 instead of λ1·sqrt(D)"),
    Mutation("ftrl-no-coalesce", "src/adactr/train/ftrl.py",
             "return g.indices()[0], g.values()", "return grad._indices()[0], grad._values()",
             (FTRL_T,), "a duplicated id updates its row once per occurrence, the last write winning"),
    Mutation("ftrl-l2-doubled", "src/adactr/train/ftrl.py",
             "return ((beta + n.sqrt()) / alpha + l2).clamp_min(_TINY)",
             "return ((beta + n.sqrt()) / alpha + 2 * l2).clamp_min(_TINY)",
             (FTRL_T,), "TensorFlow's 2·λ2 in McMahan's form"),
    Mutation("ftrl-sigma-alpha-on-one-term", "src/adactr/train/ftrl.py",
             "sigma = (n_new.sqrt() - n.sqrt()) / alpha", "sigma = n_new.sqrt() / alpha - n.sqrt()",
             (FTRL_T,), "sigma = sqrt(n + g²)/α - sqrt(n), the bug of small GitHub ports (right only for α = 1)"),
    Mutation("gftrl-dense-not-lazy", "src/adactr/train/ftrl.py",
             "rows = (grad != 0).any(1).nonzero().squeeze(1)", "rows = torch.arange(len(grad))",
             (FTRL_T,), "a dense gradient updates every row, zeroing the rows never seen"),
)


def _copy_tree(dest: Path) -> Path:
    """src/, tests/, benchmarks/, pyproject.toml and README.md copied to dest/repo; ../shared linked beside it."""
    repo = dest / "repo"
    repo.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("src", "tests", "benchmarks"):  # benchmarks: tests import the scripts
        shutil.copytree(ROOT / name, repo / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, repo / name)
    shared = ROOT.parent / "shared"
    if shared.exists():
        (dest / "shared").symlink_to(shared)  # tests/conftest.py finds ../shared/data beside the repo
    return repo


def _pytest(repo: Path, tests: tuple[str, ...], timeout: float) -> tuple[int | None, str]:
    env = dict(os.environ, PYTHONPATH=str(repo / "src"), PYTHONDONTWRITEBYTECODE="1")
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-rfE", "-p", "no:cacheprovider", *tests]
    try:
        r = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, "timeout"
    lines = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.strip()]
    failed = [ln.split(" - ")[0].split()[1] for ln in lines if ln.startswith(("FAILED ", "ERROR "))]
    return r.returncode, (failed[0] if failed else lines[-1] if lines else "")


def _check_import(repo: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(repo / "src"))
    out = subprocess.run([sys.executable, "-c", "import adactr; print(adactr.__file__)"], env=env,
                         capture_output=True, text=True, check=True).stdout.strip()
    if not Path(out).resolve().is_relative_to(repo.resolve()):
        raise SystemExit(f"the copy is not what the tests import ({out}); is adactr installed non-editable?")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--list", action="store_true", help="print the mutations and exit")
    ap.add_argument("--only", help="comma-separated mutation names")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per pytest run")
    args = ap.parse_args(argv)
    chosen = list(MUTATIONS)
    if args.only:
        names = args.only.split(",")
        unknown = sorted(set(names) - {m.name for m in MUTATIONS})
        if unknown:
            ap.error(f"unknown mutation(s): {', '.join(unknown)}")
        chosen = [m for m in MUTATIONS if m.name in names]
    if args.list:
        for m in chosen:
            print(f"{m.name:32s} {m.path:34s} {' '.join(m.tests)}\n    {m.why}")
        return 0
    assert len({m.name for m in MUTATIONS}) == len(MUTATIONS), "mutation names must be unique"

    with tempfile.TemporaryDirectory(prefix="adactr-mutations-") as tmp:
        repo = _copy_tree(Path(tmp))
        _check_import(repo)
        test_files = tuple(sorted({t for m in chosen for t in m.tests}))
        t0 = time.perf_counter()
        code, last = _pytest(repo, test_files, args.timeout)
        print(f"baseline (no mutation): {' '.join(test_files)}: {last} ({time.perf_counter() - t0:.0f} s)",
              flush=True)
        if code != 0:
            print("the unmutated tests do not pass: fix them first", file=sys.stderr)
            return 1
        rows = []
        for m in chosen:
            path = repo / m.path
            original = path.read_text(encoding="utf-8")
            n = original.count(m.old)
            if n != 1:
                rows.append((m, f"stale ({n} matches)", 0.0, ""))
                print(f"{m.name}: stale, the text to replace occurs {n} times", flush=True)
                continue
            mutated = original.replace(m.old, m.new)
            try:
                compile(mutated, str(path), "exec")
            except SyntaxError as e:
                rows.append((m, "invalid", 0.0, str(e)))
                continue
            path.write_text(mutated, encoding="utf-8")
            t0 = time.perf_counter()
            try:
                code, last = _pytest(repo, m.tests, args.timeout)
            finally:
                path.write_text(original, encoding="utf-8")
            status = "timeout" if code is None else ("caught" if code != 0 else "MISSED")
            rows.append((m, status, time.perf_counter() - t0, last))
            print(f"{m.name}: {status} ({rows[-1][2]:.0f} s) {last}", flush=True)

    caught = sum(r[1] == "caught" for r in rows)
    print("\n| mutation | file | bug | result | first failing test |\n|---|---|---|---|---|")
    for m, status, _, first in rows:
        first = first.removeprefix("tests/") if status == "caught" else ""
        print(f"| {m.name} | {m.path.removeprefix('src/adactr/')} | {m.why} | {status} | {first} |")
    print(f"\ncaught {caught} / {len(rows)}")
    return 0 if caught == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
