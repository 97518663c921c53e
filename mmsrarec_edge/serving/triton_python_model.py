"""Triton Python-backend model `recommend` (copied as model.py into a model repository by serving/triton_repo.py).

It composes what the runtime's Recommender composes (SASRec user encoder -> hnswlib retrieval -> prompt building ->
shared-prefix yes/no scoring -> top-K with explanations) over the bundle copy beside this file, so its answers equal
`mmsrarec-edge recommend`'s. Parameters (config.pbtxt): `bundle` (folder, relative to the version directory),
`mode` = `local` (graphs in this process's onnxruntime sessions) or `bls` (decoder, embedding and SASRec graphs run
as BLS requests to the repository's ONNX/TensorRT models, named by the JSON `graph_models`), `threads` (optional
onnxruntime intra-op threads). Requests are decoded and answered by serving/protocol.py, the PyTriton server's code.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils  # provided by the Python backend's stub

from mmsrarec_edge.runtime.recommender import Recommender
from mmsrarec_edge.serving import protocol


class BLSSession:
    """Stands in for an onnxruntime session: `run(names, feeds)` becomes a BLS request to another Triton model.
    Shape/type metadata (get_inputs/get_outputs) comes from the local session the Recommender opened at load."""

    def __init__(self, model: str, local):
        self.model, self._local = model, local

    def get_inputs(self):
        return self._local.get_inputs()

    def get_outputs(self):
        return self._local.get_outputs()

    def run(self, names, feeds):
        names = names or [o.name for o in self._local.get_outputs()]
        req = pb_utils.InferenceRequest(model_name=self.model, requested_output_names=list(names),
                                        inputs=[pb_utils.Tensor(k, np.ascontiguousarray(v)) for k, v in feeds.items()])
        resp = req.exec()
        if resp.has_error():
            raise pb_utils.TritonModelException(f"{self.model}: {resp.error().message()}")
        return [pb_utils.get_output_tensor_by_name(resp, n).as_numpy() for n in names]


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        version_dir = Path(args["model_repository"]) / args["model_version"]
        threads = int(params["threads"]) if params.get("threads") else None
        self.rec = Recommender(version_dir / params.get("bundle", "bundle"), provider="cpu", threads=threads)
        if params.get("mode", "local") == "bls":
            models = json.loads(params.get("graph_models", "{}"))
            sc = self.rec.scorer
            sc.map_decoder(lambda d: setattr(d, "sess", BLSSession(models["recommender.decoder"], d.sess)))
            sc.embedder.sess = BLSSession(models["recommender.embed"], sc.embedder.sess)
            if sc.suffix_scorer is not None:
                sc.suffix_scorer.sess = BLSSession(models["recommender.scorer"], sc.suffix_scorer.sess)
            if self.rec.user_encoder is not None:
                self.rec.user_encoder = BLSSession(models["sasrec.user_encoder"], self.rec.user_encoder)

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                inputs = {s.name: pb_utils.get_input_tensor_by_name(request, s.name) for s in protocol.INPUTS}
                arrays = {k: t.as_numpy() for k, t in inputs.items() if t is not None}
                results = [self.rec.recommend(**row) for row in protocol.decode_batch(arrays)]
                out = protocol.encode_batch(results)
                tensors = [pb_utils.Tensor(s.name, out[s.name].astype(object) if s.dtype is np.bytes_ else out[s.name])
                           for s in protocol.OUTPUTS]
                responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            except Exception as exc:  # noqa: BLE001 - one bad request must not fail the others in the batch
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(exc))))
        return responses

    def finalize(self):
        self.rec = None
