"""Export: ONNX graphs with parity gates, precision variants, TensorRT profiles, and the self-describing bundle.

This docstring is the bundle format's reference (format "mmsrarec-bundle", version 1); the runtime is built on it.
The package import itself is torch-free; graphs.py, kinds.py, parity.py and bundle.py need torch (the `train` extra).

Modules: profile (profiles/*.toml -> ExportProfile), graphs (torch wrappers + torch.onnx.export), suffix_graph (the
recommender's candidate scorer: shared-prefix attention, last layer at the read slots), kinds (one class per graph kind:
spec, dummy inputs, runtime object, parity check; subclasses of the torch-free kinds in core/graph_kinds.py, which hold
names, dynamic axes, TensorRT ranges, batch limits and Triton shapes), variants (int8/fp16), parity (the gate's harness:
the runtime's code in ONNX Runtime vs PyTorch), tensorrt (profiles, build-engine), catalog (items, keywords, index
copies), inputs (training dirs -> ExportInputs), bundle (the writer). The verifier is core/bundle.py (torch-free).

Layout
------
    BUNDLE/
      manifest.json                  see "manifest.json" below; lists every other file
      config.json                    see "config.json" below
      tokenizer.json                 HF `tokenizers` JSON (Tokenizer.from_file); the recommender's, and the
                                     summarizer's when identical (else summarizer/tokenizer.json)
      summarizer/vision[.P].onnx     P = precision variant: none for fp32, `.int8`, `.int4`, `.fp16`
      summarizer/embed[.P].onnx
      summarizer/decoder[.P].onnx    head "last"
      recommender/vision[.P].onnx
      recommender/embed[.P].onnx
      recommender/decoder[.P].onnx   head "yes_no"; with profile merged_decoder = "fallback" (the CPU profiles) only
                                     when there is no scorer graph, which then serves every scoring path
      recommender/scorer[.P].onnx    the candidate scorer (suffix_graph.py); absent for decoders it does not cover
      sasrec/user_encoder.onnx
      sasrec/item_ids.json           {"item_ids": [...]}: SASRec index k+1 <-> item_ids[k]; 0 = padding
      sasrec/item_embeddings.safetensors   item_embeddings float32 [N+1, d] (row = SASRec index): first-stage ranking
      keywords/keywords.parquet      the keyword store, as summarize/store.py writes it
      index/...                      the recommender's retrieval dir, copied as is (hnswlib .hnsw/.bin, Parquet, JSON)
      catalog/items.parquet          item_id int64, title, text_keywords, image_keywords, keywords (list<string>),
                                     has_image bool, [candidate_token_ids list<int32>: each item's suffix ids from
                                     recommend.prompt.candidate_ids, absent when the suffix depends on the request]
      catalog/image_features.safetensors   item_ids int64 [N], features float32 [N, n_image_tokens, H]: the
                                     recommender's projected image features (PyTorch fp32), for items with an image,
                                     when its prompt shows candidate images (recommender.json prompt.candidate_image)
      engines/<graph>.<fp16|fp32>.engine   only after `mmsrarec-edge build-engine` (serialized TensorRT engines)
    Graphs over 64 MB keep their weights in `<file>.onnx.data` next to the graph, each tensor at a 4096-byte aligned
    offset (onnxruntime memory-maps them: exporter/variants.py has the measured gain). Nothing else is allowed: only
    .onnx, .onnx.data, .json, .parquet, .safetensors, .hnsw, .bin, .engine files (no pickle); the verifier refuses
    unlisted files. runtime/bundle.read_safetensors reads the safetensors files with numpy alone.

Graph I/O (all float tensors are float32 at the graph boundary, in every variant; ids/masks int64)
-----------------------------------------------------------------------------------------------
- vision:   pixel_values [images, 3, S, S] (imaging.preprocess) -> image_features [images, n_image_tokens, H].
- embed:    input_ids [batch, sequence] -> inputs_embeds [batch, sequence, H]. Image features replace, in order, the
            embeddings at `<image>` token positions (config <stage>.image_token_id; n_image_tokens slots per image).
- decoder (merged; past_sequence may be 0):
    inputs:  inputs_embeds [batch, sequence, H], attention_mask [batch, total_sequence] (1 = real token, over past +
             current slots; the graph adds causality by slot order), position_ids [batch, sequence],
             past_key_values.{i}.key / .value [batch, kv_heads, past_sequence, head_dim] for i < num_layers,
             and for the yes_no head logits_index [batch, positions] (slot within the current call to read);
    outputs: summarizer ("last" head): logits [batch, vocab] at the last slot (prompts are left-padded);
             recommender ("yes_no" head): yes_no_logits [batch, positions, 2] = (l_yes, l_no);
             present.{i}.key / .value [batch, kv_heads, total_sequence, head_dim].
  Score = sigmoid(l_yes - l_no) = p(yes) / (p(yes) + p(no)). Shared-prefix scoring: run the prefix at batch 1 with
  past 0, repeat the presents C times along axis 0, run the right-padded candidate suffixes with position_ids from the
  prefix length on and logits_index = each suffix's last real slot. Why merged and why a yes/no head: graphs.py.
- scorer (recommender; one call per chunk of candidates, see suffix_graph.py):
    inputs:  inputs_embeds [batch, sequence, H] (candidate suffixes, right-padded), suffix_mask [batch, sequence],
             logits_index [batch, positions] (slots to score), prefix_embeds [1, prefix_sequence, H] (prefix tokens
             not yet in the KV, >= 1), past_key_values.{i}.key / .value [1, kv_heads, past_sequence, head_dim];
    outputs: yes_no_logits [batch, positions, 2]; present.{i}.key / .value [1, kv_heads, total_prefix_sequence,
             head_dim] (the prefix KV, for the next chunk: re-feed the prefix's last token over all but its KV).
  Same scores as the decoder path; the runtime prefers it (runtime/scorer.py has the measured difference).
- user_encoder: history int64 [batch, max_len] (SASRec indices, left-padded with 0) -> user_embedding [batch, d].
- Qwen2-VL / Qwen2.5-VL (models/families.py, exporter/qwen_vl.py): the same graphs, except that
    vision takes pixel_values at ONE resolution (the profile's [vision] image_size, else the checkpoint's): a fixed
             patch grid, cut into the Qwen processor's patch rows inside the graph;
    decoder  position_ids are [3, batch, sequence] (M-RoPE: temporal, height, width), computed by the runtime from
             the ids (core/rope_index.py, exactly as transformers' get_rope_index; images are found by their
             vision-start token); decoding continues each row at its largest position + 1;
    scorer   takes position_ids [3, batch, sequence] and prefix_position_ids [3, 1, prefix_sequence] after
             prefix_embeds; a suffix's positions start at the prefix's largest + 1.
- InternVL3 and SmolVLM / Idefics3 (models/families.py, exporter/internvl.py, exporter/idefics3.py): the LLaVA graphs;
    vision takes pixel_values at the tower's own size (one tile per image; no image splitting), with the patch
             positions a constant: InternViT + pixel shuffle + MLP projector, or the SigLIP-style ViT + pixel
             shuffle + connector; decoder and scorer are the LLaVA ones over the Qwen2 / Llama decoder.

config.json
-----------
    format_version       1
    limits               the export profile's [limits] (max_candidates, max_prefix_tokens, max_suffix_tokens,
                         max_prompt_tokens, max_new_tokens, summarizer_batch, user_batch, images_batch)
    image_preprocess     {mean, std} for imaging.preprocess (size: <stage>.image_size)
    summarizer / recommender   graphs [names], decoder/vision model types, family (llava | qwen2_vl | qwen2_5_vl |
                         internvl | smolvlm | idefics3),
                         rope {type "mrope", image_token_id, vision_start_token_id, grid [t, h, w]} (multimodal
                         positions; absent: 1-D), hidden_size, num_layers, num_kv_heads,
                         head_dim, vocab_size, max_position_embeddings, image_size, num_image_tokens, image_token_id,
                         tokenizer (relative path), special_tokens {bos_id, eos_id, pad_id, unk_id}, then every key of
                         the stage's own summarizer.json / recommender.json (prompt settings); recommender also
                         yes_token_id, no_token_id
    sasrec               graph, max_len, hidden, item_ids (path), item_embeddings (path), padding_index
    keywords             {file, items, meta}                          (when a keyword store was given)
    retrieval            {dir: "index", files: [...]}                 (when the recommender dir has retrieval/)
    catalog              {items, count, image_features (path or null), image_feature_shape, candidate_token_ids?,
                         mode (known|all), known_items (items SASRec knows), cold_start_items (catalog items it
                         does not), left_out_items (dataset items not in the catalog: dropped by the k-core filter)}

manifest.json
-------------
    format "mmsrarec-bundle", format_version 1, created (UTC), export_seconds,
    packages {python, mmsrarec-edge, torch, transformers, onnx, onnxruntime, numpy, tokenizers},
    profile (the ExportProfile as a dict + source path), sources {summarizer, recommender dirs},
    files {relative path: {sha256, bytes}} for every file but manifest.json,
    graphs {name: {kind (vision|embed|decoder_last|decoder_yes_no|decoder_scorer|user_encoder: core/graph_kinds.py),
                   default_variant,
                   variants {precision: {file, parity {precision, passed, cases, real_cases, metrics,
                                                 tolerances, info, provider (only when not the CPU's)},
                                         quantized_nodes | fp32_nodes_kept}},
                   inputs / outputs [{name, dtype, shape (ints and dim names)}],
                   tensorrt {profiles [{name, shapes {input: {min, opt, max}}}], fp32_nodes [ONNX node names]}}},
    graphs_skipped {name: reason} (optional graphs the model cannot have, e.g. recommender.scorer for a decoder
                   suffix_graph.py does not cover; the vision graphs of a text-only dataset unless --vision-graphs),
    engines {graph: {file, tensorrt_version, fp16, workspace_mb, fp32_layers, profiles}} (filled by build-engine).
"""
