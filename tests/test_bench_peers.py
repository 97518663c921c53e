"""The optimum peer scores exactly what the PyTorch LLaVA scores on text-only prompts."""

import numpy as np
import pytest
import torch

pytest.importorskip("optimum.onnxruntime")

from mmsrarec_edge.bench.peers import OptimumPerCandidate, extract_text_lm
from mmsrarec_edge.core.errors import UserError
from mmsrarec_edge.models.mllm import IMAGE_TOKEN, MLLMConfig, build_mllm, build_tokenizer


@pytest.fixture(scope="module")
def tiny():
    tok = build_tokenizer()
    cfg = MLLMConfig(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128)
    return build_mllm(cfg, tok), tok


def test_extracted_lm_matches_llava(tiny):
    llava, tok = tiny
    ids = torch.tensor([tok("history: red lamp, blue clock. candidate: kite")["input_ids"]])
    with torch.no_grad():
        ref = llava(input_ids=ids).logits
        got = extract_text_lm(llava)(input_ids=ids).logits
    assert torch.allclose(ref, got, atol=1e-5)


def test_optimum_peer_scores_match_torch(tiny, tmp_path):
    llava, tok = tiny
    yes, no = tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")
    peer = OptimumPerCandidate(llava, tok, tmp_path, yes, no, tok.convert_tokens_to_ids(IMAGE_TOKEN))
    prefix = tok("user liked: red striped lamp, blue clock.")["input_ids"]
    suffixes = [tok(f" candidate: {w}. answer:")["input_ids"] for w in ("green kite", "black vase", "pink badge")]
    got = peer.score(prefix, suffixes)
    with torch.no_grad():
        want = []
        for s in suffixes:
            logits = llava(input_ids=torch.tensor([prefix + s])).logits[0, -1]
            want.append(torch.sigmoid(logits[yes] - logits[no]).item())
    assert np.allclose(got, want, atol=1e-5)
    with pytest.raises(UserError, match="text-only"):
        peer.score(prefix + [tok.convert_tokens_to_ids(IMAGE_TOKEN)], suffixes)
