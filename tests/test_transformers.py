"""Transformers with token inputs: a BERT-like encoder (nn.Embedding, torch's own
TransformerEncoder with nn.MultiheadAttention) and a GPT-2-like decoder (GPT-2's Conv1D, whose
weight is stored [in, out]) go through the zoo contract; every weight tensor of theirs is a site."""

from __future__ import annotations

import torch
from torch import nn

from autocompress import compress
from autocompress.compress.sites import Attention
from autocompress.plan import CompressionPlan, LayerPlan
from autocompress.space import load_space
from autocompress.survey import weight_coverage
from tests.helpers import REPO, check_zoo_contract

VOCAB, LENGTH, WIDTH, CLASSES = 50, 8, 32, 10


class TinyBert(nn.Module):
    """Token and position embeddings, two post-norm encoder layers (4 heads), a mean-pooled head."""

    def __init__(self, **_: object) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.tokens = nn.Embedding(VOCAB, WIDTH, padding_idx=0)
        self.positions = nn.Embedding(LENGTH, WIDTH)
        layer = nn.TransformerEncoderLayer(WIDTH, 4, 2 * WIDTH, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(WIDTH, CLASSES)
        with torch.no_grad():  # the encoder's layers start as copies of one: trained ones differ
            for p in self.encoder.parameters():
                p.add_(0.02 * torch.randn_like(p))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.tokens(ids) + self.positions(torch.arange(ids.shape[1], device=ids.device))
        return self.head(self.encoder(x).mean(dim=1))


class Conv1D(nn.Module):
    """GPT-2's Conv1D (as in Hugging Face transformers): x @ weight + bias, weight [in, out]."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(0.02 * torch.randn(nx, nf))
        self.bias = nn.Parameter(torch.zeros(nf))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight)
        return out.reshape(*x.shape[:-1], self.nf)


class GptBlock(nn.Module):
    def __init__(self, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.ln_1, self.ln_2 = nn.LayerNorm(WIDTH), nn.LayerNorm(WIDTH)
        self.c_attn, self.c_proj = Conv1D(3 * WIDTH, WIDTH), Conv1D(WIDTH, WIDTH)
        self.c_fc, self.mlp_proj = Conv1D(4 * WIDTH, WIDTH), Conv1D(WIDTH, 4 * WIDTH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(WIDTH, dim=2)  # GPT-2's fused projection, split by width

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, n, self.heads, d // self.heads).transpose(1, 2)

        attended = nn.functional.scaled_dot_product_attention(heads(q), heads(k), heads(v), is_causal=True)
        x = x + self.c_proj(attended.transpose(1, 2).reshape(b, n, d))
        return x + self.mlp_proj(nn.functional.gelu(self.c_fc(self.ln_2(x))))


class TinyGpt(nn.Module):
    """GPT-2's layout at toy size: wte + wpe, two blocks, a final norm, a head on the last token."""

    def __init__(self, **_: object) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.wte, self.wpe = nn.Embedding(VOCAB, WIDTH), nn.Embedding(LENGTH, WIDTH)
        self.h = nn.ModuleList([GptBlock(), GptBlock()])
        self.ln_f = nn.LayerNorm(WIDTH)
        self.head = nn.Linear(WIDTH, CLASSES)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.wte(ids) + self.wpe(torch.arange(ids.shape[1], device=ids.device))
        for block in self.h:
            x = block(x)
        return self.head(self.ln_f(x)[:, -1])


def _ids(n: int = 4) -> torch.Tensor:
    return torch.randint(1, VOCAB, (n, LENGTH), generator=torch.Generator().manual_seed(1))


def test_every_weight_tensor_of_a_token_model_is_a_site_with_its_knobs() -> None:
    """Embeddings, the attention's q/k/v/out and GPT-2's Conv1D (a Linear of the canonical form,
    with the same outputs) are listed. The embeddings take bits, sparsity
    and rank, and keep their channels with the reason. Left out: biases and norms only."""
    for build in (TinyBert, TinyGpt):
        model, x = build().eval(), _ids()
        with torch.no_grad():
            want = model(x)
        space = load_space(REPO / "search_spaces" / "default.yaml").resolve(model, x[:2])
        with torch.no_grad():
            torch.testing.assert_close(model(x), want, atol=1e-5, rtol=1e-5)  # the canonical form computes the same
        coverage = weight_coverage(model, set(space.layers))
        # At toy width biases and norms weigh 4%: every weight matrix is listed, nothing else left.
        assert {e["type"] for e in coverage["not_compressed"]} == {"bias", "LayerNorm"}, coverage
        table = space.layers["tokens" if build is TinyBert else "wte"]
        assert table.type == "Embedding" and not table.knobs["rank"].off and 4 in table.knobs["bits"].choices
        assert table.knobs["sparsity_mode"].off and any("embedding's channels are the model's width" in n for n in table.notes)
    assert isinstance(TinyGpt().h[0].c_attn, Conv1D) and "h.0.c_attn" in space.layers and space.layers["h.0.c_attn"].type == "Linear"


def test_a_factorized_embedding_keeps_its_padding_row_and_its_lookups() -> None:
    """Embedding(n, d) -> Embedding(n, r) and Linear(r, d): at full rank the same lookups, and
    the padding row stays zero (and padding_idx)."""
    model = TinyBert().eval()
    x = _ids()
    x[:, -2:] = 0
    with torch.no_grad():
        want = model.tokens(x)
    compress.apply(model, CompressionPlan({"tokens": LayerPlan(sparsity=0.0, structured=False, bits=32, rank=WIDTH)}))
    with torch.no_grad():
        torch.testing.assert_close(model.tokens(x), want, atol=1e-5, rtol=1e-5)
    assert model.tokens.first.padding_idx == 0 and float(model.tokens.first.weight.detach()[0].abs().max()) < 1e-6


def test_token_models_take_the_zoo_contract() -> None:
    """Every knob value the default space offers applies, runs, packs, reloads bit-identically
    and exports to ONNX (token ids in) that ONNX Runtime runs with the model's outputs."""
    for build in (TinyBert, TinyGpt):
        assert check_zoo_contract(build, _ids(), CLASSES) >= 10, build.__name__
    model = TinyBert().eval()
    compress.canonical(model)
    assert isinstance(model.encoder.layers[0].self_attn, Attention)


def test_a_token_model_exports_with_dynamic_batch_and_sequence() -> None:
    """Token ids in: both the batch and the sequence axis are dynamic in the ONNX file."""
    import onnxruntime as ort

    from autocompress.deploy.onnx_export import to_onnx

    model = TinyGpt().eval()
    plan = CompressionPlan({"wte": LayerPlan(sparsity=0.0, structured=False, bits=4, rank=None)})
    compress.apply(model, plan)
    compress.bake(model)
    data, stored = to_onnx(model, plan, _ids())
    assert stored == ["wte.weight"]  # the table's 4-bit codes ship as codes
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    for n, length in ((1, 3), (5, LENGTH)):
        ids = torch.randint(1, VOCAB, (n, length))
        got = session.run(None, {"input": ids.numpy()})[0]
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(got), model(ids), atol=1e-4, rtol=1e-4)


def test_a_token_model_deploys_int8_on_the_onnx_runtimes() -> None:
    """Token ids reach an ONNX session, its calibration and its timing as integers (a float cast
    of them is refused by ONNX Runtime), and the int8 form predicts as the model does."""
    from autocompress.deploy.runtimes import runtime

    model = compress.canonical(TinyBert().eval())
    plan = CompressionPlan({n: LayerPlan(bits=4 if "linear" in n else 8) for n in compress.compressible_layers(model)})
    ids = _ids(32)
    compress.apply(model, plan, example=ids[:2])
    compress.bake(model)
    deployed = runtime("onnxruntime").deploy(model, plan, ids, "int8", "cpu", 1, [ids])
    assert deployed.backend.startswith("onnxruntime") and deployed.run_block(2) > 0
    with torch.no_grad():
        assert (deployed.predict(ids).argmax(1) == model(ids).argmax(1)).float().mean() >= 0.9
