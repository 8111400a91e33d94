// Generation with a KV cache: each new token runs the same embedding, layer and head forward
// as training (decoder_forward.cc), with the cache supplying the earlier positions' keys and
// values.
#include "model/decoder.h"

namespace lattice {

// The activation set generation uses (micro-batch ids of training are >= 0).
constexpr int kDecodeMicro = -1;

KvCache Decoder::NewKvCache(int64_t max_len) const {
  LATTICE_CHECK_MSG(shard_.whole(), "generation needs the whole model");
  KvCache c;
  c.max_len = max_len;
  for (int64_t l = 0; l < cfg_.n_layer; ++l) {
    c.k.push_back(Tensor::Zeros({max_len, k_, d_}, DType::kF32));
    c.v.push_back(Tensor::Zeros({max_len, k_, d_}, DType::kF32));
  }
  return c;
}

void Decoder::DecodeStep(int32_t token, KvCache& cache, float* logits_out) {
  LATTICE_CHECK_MSG(shard_.whole(), "generation needs the whole model");
  LATTICE_CHECK(cache.len < cache.max_len);
  LATTICE_CHECK(llama_ || cache.len < cfg_.seq_len);  // learned positions end at seq_len
  LATTICE_CHECK(token >= 0 && token < v_);
  ActSet& s = *Acquire(0, kDecodeMicro, 1, 1);
  s.pos0 = cache.len;
  be_->CopyFromHost(kernels::ViewOf(s.tokens), &token, DType::kI32, 1);
  s.has_mask = false;
  DecodeContext ctx{&cache};
  ChunkForward(0, s, nullptr, &ctx);
  HeadForward(s, kernels::ViewOf(s.residual_out), /*with_loss=*/false);
  be_->CopyToHost(logits_out, DType::kF32, kernels::ViewOf(logits_), vp_);
  cache.len += 1;
  Release(0, kDecodeMicro);
}

}  // namespace lattice
