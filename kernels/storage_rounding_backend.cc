#include "kernels/storage_rounding_backend.h"

#include "runtime/status.h"

namespace lattice::kernels {

StorageRoundingBackend::StorageRoundingBackend(Backend& inner, DType storage)
    : inner_(inner), storage_(storage) {
  LATTICE_CHECK_MSG(storage == DType::kBF16 || storage == DType::kF16,
                    "storage rounding needs bf16 or f16");
}

std::vector<std::pair<std::string, std::string>> StorageRoundingBackend::Properties() const {
  std::vector<std::pair<std::string, std::string>> p = inner_.Properties();
  p.emplace_back("storage", DTypeName(storage_));
  return p;
}

void StorageRoundingBackend::Store(TensorView x, int64_t n) {
  if (!x.present() || n <= 0) return;
  inner_.RoundThrough(x.Sub(0, n), storage_);
}

void StorageRoundingBackend::StoreHeads(TensorView x, int64_t rows, int64_t heads, int64_t d,
                                        int64_t row_stride) {
  // One span from the first head of the first row to the last head of the last row: the
  // elements between (the rest of each qkv row) are stored activations already, and rounding
  // a rounded value changes nothing.
  if (rows <= 0) return;
  Store(x, (rows - 1) * row_stride + heads * d);
}

void StorageRoundingBackend::MatmulForward(TensorView out, ConstView inp, ConstView weight,
                                           ConstView bias, int64_t n, int64_t c, int64_t oc) {
  inner_.MatmulForward(out, inp, weight, bias, n, c, oc);
  Store(out, n * oc);
}

void StorageRoundingBackend::MatmulBackward(TensorView dinp, TensorView dweight, TensorView dbias,
                                            ConstView dout, ConstView inp, ConstView weight,
                                            int64_t n, int64_t c, int64_t oc) {
  inner_.MatmulBackward(dinp, dweight, dbias, dout, inp, weight, n, c, oc);
  Store(dinp, n * c);
}

void StorageRoundingBackend::MatmulBackwardTo(TensorView dinp, TensorView dweight,
                                              TensorView dbias, ConstView dout, ConstView inp,
                                              ConstView weight, int64_t n, int64_t c,
                                              int64_t oc) {
  inner_.MatmulBackwardTo(dinp, dweight, dbias, dout, inp, weight, n, c, oc);
  Store(dinp, n * c);
}

void StorageRoundingBackend::AddRowBias(TensorView x, ConstView bias, int64_t rows, int64_t c) {
  inner_.AddRowBias(x, bias, rows, c);
  Store(x, rows * c);
}

void StorageRoundingBackend::LayerNormForward(TensorView out, TensorView mean, TensorView rstd,
                                              ConstView inp, ConstView weight, ConstView bias,
                                              int64_t n, int64_t c, float eps) {
  inner_.LayerNormForward(out, mean, rstd, inp, weight, bias, n, c, eps);
  Store(out, n * c);
}

void StorageRoundingBackend::LayerNormBackward(TensorView dinp, TensorView dweight,
                                               TensorView dbias, ConstView dout, ConstView inp,
                                               ConstView weight, ConstView mean, ConstView rstd,
                                               int64_t n, int64_t c) {
  inner_.LayerNormBackward(dinp, dweight, dbias, dout, inp, weight, mean, rstd, n, c);
  Store(dinp, n * c);
}

void StorageRoundingBackend::RmsNormForward(TensorView out, TensorView rstd, ConstView inp,
                                            ConstView weight, int64_t n, int64_t c, float eps) {
  inner_.RmsNormForward(out, rstd, inp, weight, n, c, eps);
  Store(out, n * c);
}

void StorageRoundingBackend::RmsNormBackward(TensorView dinp, TensorView dweight, ConstView dout,
                                             ConstView inp, ConstView weight, ConstView rstd,
                                             int64_t n, int64_t c) {
  inner_.RmsNormBackward(dinp, dweight, dout, inp, weight, rstd, n, c);
  Store(dinp, n * c);
}

void StorageRoundingBackend::AttentionForward(TensorView out, TensorView lse, ConstView qkv,
                                              int64_t b, int64_t t, int64_t h, int64_t kvh,
                                              int64_t d) {
  inner_.AttentionForward(out, lse, qkv, b, t, h, kvh, d);
  Store(out, b * t * h * d);
}

void StorageRoundingBackend::AttentionBackward(TensorView dqkv, ConstView dout, ConstView qkv,
                                               ConstView out, ConstView lse, int64_t b,
                                               int64_t t, int64_t h, int64_t kvh, int64_t d) {
  inner_.AttentionBackward(dqkv, dout, qkv, out, lse, b, t, h, kvh, d);
  Store(dqkv, b * t * (h + 2 * kvh) * d);
}

void StorageRoundingBackend::AttentionBackwardTo(TensorView dqkv, ConstView dout, ConstView qkv,
                                                 ConstView out, ConstView lse, int64_t b,
                                                 int64_t t, int64_t h, int64_t kvh, int64_t d) {
  inner_.AttentionBackwardTo(dqkv, dout, qkv, out, lse, b, t, h, kvh, d);
  Store(dqkv, b * t * (h + 2 * kvh) * d);
}

void StorageRoundingBackend::AttentionDecode(TensorView out, ConstView q, ConstView k_cache,
                                             ConstView v_cache, int64_t len, int64_t h,
                                             int64_t kvh, int64_t d) {
  inner_.AttentionDecode(out, q, k_cache, v_cache, len, h, kvh, d);
  Store(out, h * d);
}

void StorageRoundingBackend::GeluForward(TensorView out, ConstView inp, int64_t n) {
  inner_.GeluForward(out, inp, n);
  Store(out, n);
}

void StorageRoundingBackend::GeluBackward(TensorView dinp, ConstView inp, ConstView dout,
                                          int64_t n) {
  inner_.GeluBackward(dinp, inp, dout, n);
  Store(dinp, n);
}

void StorageRoundingBackend::GeluBackwardTo(TensorView dinp, ConstView inp, ConstView dout,
                                            int64_t n) {
  inner_.GeluBackwardTo(dinp, inp, dout, n);
  Store(dinp, n);
}

void StorageRoundingBackend::BiasGeluForward(TensorView pre, TensorView out, ConstView bias,
                                             int64_t n, int64_t f) {
  inner_.BiasGeluForward(pre, out, bias, n, f);
  Store(pre, n * f);
  Store(out, n * f);
}

void StorageRoundingBackend::SwiGluForward(TensorView out, ConstView inp, int64_t n, int64_t f) {
  inner_.SwiGluForward(out, inp, n, f);
  Store(out, n * f);
}

void StorageRoundingBackend::SwiGluBackward(TensorView dinp, ConstView inp, ConstView dout,
                                            int64_t n, int64_t f) {
  inner_.SwiGluBackward(dinp, inp, dout, n, f);
  Store(dinp, 2 * n * f);
}

void StorageRoundingBackend::RopeForward(TensorView x, int64_t b, int64_t t, int64_t heads,
                                         int64_t d, int64_t row_stride, int64_t pos_offset,
                                         float theta) {
  inner_.RopeForward(x, b, t, heads, d, row_stride, pos_offset, theta);
  StoreHeads(x, b * t, heads, d, row_stride);
}

void StorageRoundingBackend::RopeBackward(TensorView dx, int64_t b, int64_t t, int64_t heads,
                                          int64_t d, int64_t row_stride, int64_t pos_offset,
                                          float theta) {
  inner_.RopeBackward(dx, b, t, heads, d, row_stride, pos_offset, theta);
  StoreHeads(dx, b * t, heads, d, row_stride);
}

void StorageRoundingBackend::EmbeddingForward(TensorView out, ConstView tokens, ConstView wte,
                                              ConstView wpe, int64_t b, int64_t t, int64_t c,
                                              int64_t pos_offset) {
  inner_.EmbeddingForward(out, tokens, wte, wpe, b, t, c, pos_offset);
  Store(out, b * t * c);
}

void StorageRoundingBackend::PositionEmbeddingForward(TensorView x, ConstView wpe, int64_t rows,
                                                      int64_t c, int64_t first_row, int64_t t,
                                                      int64_t pos0) {
  inner_.PositionEmbeddingForward(x, wpe, rows, c, first_row, t, pos0);
  Store(x, rows * c);
}

void StorageRoundingBackend::AttentionForwardDocs(TensorView out, TensorView lse, ConstView qkv,
                                                  ConstView doc_starts, int64_t b, int64_t t,
                                                  int64_t h, int64_t kvh, int64_t d) {
  inner_.AttentionForwardDocs(out, lse, qkv, doc_starts, b, t, h, kvh, d);
  Store(out, b * t * h * d);
}

void StorageRoundingBackend::AttentionBackwardDocsTo(TensorView dqkv, ConstView dout,
                                                     ConstView qkv, ConstView out, ConstView lse,
                                                     ConstView doc_starts, int64_t b, int64_t t,
                                                     int64_t h, int64_t kvh, int64_t d) {
  inner_.AttentionBackwardDocsTo(dqkv, dout, qkv, out, lse, doc_starts, b, t, h, kvh, d);
  Store(dqkv, b * t * (h + 2 * kvh) * d);
}

void StorageRoundingBackend::RopeForwardDocs(TensorView x, ConstView doc_starts, int64_t b,
                                             int64_t t, int64_t heads, int64_t d,
                                             int64_t row_stride, float theta) {
  inner_.RopeForwardDocs(x, doc_starts, b, t, heads, d, row_stride, theta);
  StoreHeads(x, b * t, heads, d, row_stride);
}

void StorageRoundingBackend::RopeBackwardDocs(TensorView dx, ConstView doc_starts, int64_t b,
                                              int64_t t, int64_t heads, int64_t d,
                                              int64_t row_stride, float theta) {
  inner_.RopeBackwardDocs(dx, doc_starts, b, t, heads, d, row_stride, theta);
  StoreHeads(dx, b * t, heads, d, row_stride);
}

void StorageRoundingBackend::PositionEmbeddingForwardDocs(TensorView x, ConstView wpe,
                                                          ConstView doc_starts, int64_t rows,
                                                          int64_t c, int64_t first_row,
                                                          int64_t t) {
  inner_.PositionEmbeddingForwardDocs(x, wpe, doc_starts, rows, c, first_row, t);
  Store(x, rows * c);
}

void StorageRoundingBackend::CrossEntropyBackward(TensorView dlogits, ConstView logits,
                                                  ConstView targets, ConstView loss_mask,
                                                  float dloss, int64_t n, int64_t v,
                                                  int64_t vp) {
  inner_.CrossEntropyBackward(dlogits, logits, targets, loss_mask, dloss, n, v, vp);
  Store(dlogits, n * vp);
}

void StorageRoundingBackend::CrossEntropyBackwardProbs(TensorView probs, ConstView targets,
                                                       ConstView loss_mask, float dloss,
                                                       int64_t n, int64_t v, int64_t vp) {
  inner_.CrossEntropyBackwardProbs(probs, targets, loss_mask, dloss, n, v, vp);
  Store(probs, n * vp);
}

void StorageRoundingBackend::CrossEntropyShardBackward(TensorView dlogits, ConstView logits,
                                                       ConstView targets, ConstView loss_mask,
                                                       ConstView row_max, ConstView sum_exp,
                                                       float dloss, int64_t n, int64_t cols,
                                                       int64_t col_begin, int64_t v) {
  inner_.CrossEntropyShardBackward(dlogits, logits, targets, loss_mask, row_max, sum_exp, dloss,
                                   n, cols, col_begin, v);
  Store(dlogits, n * cols);
}

void StorageRoundingBackend::ClassifierForwardBackward(
    TensorView dhidden, TensorView dweight, TensorView scratch, ConstView hidden,
    ConstView weight, ConstView targets, ConstView loss_mask, const ClassifierArgs& args,
    const ClassifierAllReduce& reduce, DeviceScalars& s, int slot) {
  inner_.ClassifierForwardBackward(dhidden, dweight, scratch, hidden, weight, targets, loss_mask,
                                   args, reduce, s, slot);
  Store(dhidden, args.n * args.c);
}

void StorageRoundingBackend::EmbeddingShardForward(TensorView out, ConstView tokens,
                                                   ConstView wte_rows, int64_t row_begin,
                                                   int64_t rows, int64_t n, int64_t c) {
  inner_.EmbeddingShardForward(out, tokens, wte_rows, row_begin, rows, n, c);
  Store(out, n * c);
}

void StorageRoundingBackend::ResidualForward(TensorView out, ConstView a, ConstView b,
                                             int64_t n) {
  inner_.ResidualForward(out, a, b, n);
  Store(out, n);
}

void StorageRoundingBackend::ResidualBackward(TensorView da, TensorView db, ConstView dout,
                                              int64_t n) {
  inner_.ResidualBackward(da, db, dout, n);
  Store(da, n);
  Store(db, n);
}

std::unique_ptr<Backend> MakeStorageRoundingBackend(Backend& inner, DType storage) {
  return std::make_unique<StorageRoundingBackend>(inner, storage);
}

}  // namespace lattice::kernels
