// Generation with a KV cache: each new token runs the same embedding, layer and head forward
// as training (decoder_forward.cc), with the cache supplying the earlier positions' keys and
// values.
#include "model/decoder.h"

#include <cstring>

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
  s.tokens.i32()[0] = token;
  s.has_mask = false;
  DecodeContext ctx{&cache};
  ChunkForward(0, s, nullptr, &ctx);
  HeadForward(s, s.residual_out.f32(), /*with_loss=*/false);
  std::memcpy(logits_out, s.logits.f32(), vp_ * sizeof(float));
  cache.len += 1;
  Release(0, kDecodeMicro);
}

}  // namespace lattice
