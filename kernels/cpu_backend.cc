#include "kernels/cpu_backend.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "kernels/adamw.h"
#include "kernels/attention.h"
#include "kernels/backend_checks.h"
#include "kernels/cross_entropy.h"
#include "kernels/embedding.h"
#include "kernels/gelu.h"
#include "kernels/grad_norm.h"
#include "kernels/layernorm.h"
#include "kernels/math_cpu.h"
#include "kernels/matmul.h"
#include "kernels/mixed_precision.h"
#include "kernels/residual.h"
#include "kernels/rmsnorm.h"
#include "kernels/rope.h"
#include "kernels/swiglu.h"
#include "kernels/threads.h"
#include "kernels/vocab_parallel.h"
#include "kernels/zero.h"
#include "runtime/profiler.h"
#include "runtime/rng.h"
#include "runtime/status.h"

namespace lattice::kernels {

namespace {

inline const float* CF(const ConstView& v) { return v.f32(); }
inline const int32_t* CI(const ConstView& v) { return v.i32(); }

bool IsFloat(DType t) { return t == DType::kF32 || t == DType::kBF16 || t == DType::kF16; }

float LoadFloat(const void* p, DType t, int64_t i) {
  switch (t) {
    case DType::kF32:
      return static_cast<const float*>(p)[i];
    case DType::kBF16:
      return Bf16ToFloat(static_cast<const uint16_t*>(p)[i]);
    default:
      return F16ToFloat(static_cast<const uint16_t*>(p)[i]);
  }
}

void StoreFloat(void* p, DType t, int64_t i, float x) {
  switch (t) {
    case DType::kF32:
      static_cast<float*>(p)[i] = x;
      return;
    case DType::kBF16:
      static_cast<uint16_t*>(p)[i] = FloatToBf16(x);
      return;
    default:
      static_cast<uint16_t*>(p)[i] = FloatToF16(x);
      return;
  }
}

// n elements of src_dtype at src into dst_dtype at dst (host memory on both sides here).
void ConvertElements(void* dst, DType dst_dtype, const void* src, DType src_dtype, int64_t n) {
  if (n <= 0) return;
  if (dst_dtype == src_dtype) {
    std::memcpy(dst, src, static_cast<size_t>(n) * DTypeSize(src_dtype));
    return;
  }
  LATTICE_CHECK_MSG(IsFloat(dst_dtype) && IsFloat(src_dtype),
                    absl::StrCat("backend cast from ", DTypeName(src_dtype), " to ",
                                 DTypeName(dst_dtype), ": only float types convert"));
#pragma omp parallel for schedule(static) if (parallel : cpu::internal::Parallel(n))
  for (int64_t i = 0; i < n; ++i) StoreFloat(dst, dst_dtype, i, LoadFloat(src, src_dtype, i));
}

class CpuEvent final : public Event {
 public:
  void Record(Stream& stream) override {}
  bool Query() const override { return true; }
  void Synchronize() override {}
};

}  // namespace

float ClipCoefficient(double norm, float max_norm) { return cpu::ClipCoefficient(norm, max_norm); }

Backend& DefaultBackend() {
  static CpuBackend* backend = new CpuBackend();  // never destroyed: used until exit
  return *backend;
}

// ---- Memory, copies, ordering ----------------------------------------------------------------

std::shared_ptr<Storage> CpuBackend::AllocateStorage(int64_t bytes) {
  LATTICE_CHECK(bytes >= 0);
  allocations_.fetch_add(1);
  return std::make_shared<CpuStorage>(static_cast<size_t>(bytes));
}

DeviceScalars CpuBackend::AllocateScalars(int n) {
  LATTICE_CHECK(n > 0);
  return DeviceScalars(AllocateStorage(static_cast<int64_t>(n) * sizeof(double)), n);
}

void CpuBackend::Cast(TensorView dst, ConstView src) {
  LATTICE_CHECK_MSG(dst.numel >= src.numel, "backend cast: destination too small");
  ConvertElements(dst.data, dst.dtype, src.data, src.dtype, src.numel);
}

void CpuBackend::Copy(TensorView dst, ConstView src) {
  Need(dst, src.numel, "copy", "dst", src.dtype);
  if (src.numel > 0) {
    std::memcpy(dst.data, src.data, static_cast<size_t>(src.numel) * DTypeSize(src.dtype));
  }
}

void CpuBackend::CopyFromHost(TensorView dst, const void* host, DType host_dtype, int64_t n) {
  LATTICE_CHECK_MSG(dst.numel >= n, "backend copy from host: destination too small");
  ConvertElements(dst.data, dst.dtype, host, host_dtype, n);
}

void CpuBackend::CopyToHost(void* host, DType host_dtype, ConstView src, int64_t n) {
  LATTICE_CHECK_MSG(src.numel >= n, "backend copy to host: source too small");
  ConvertElements(host, host_dtype, src.data, src.dtype, n);
}

void CpuBackend::Zero(TensorView x) {
  if (x.numel <= 0) return;
  if (x.dtype == DType::kF32) {
    cpu::ZeroFill(x.f32(), x.numel);
  } else {
    std::memset(x.data, 0, static_cast<size_t>(x.numel) * DTypeSize(x.dtype));
  }
}

void CpuBackend::Fill(TensorView x, float value) {
  Need(x, x.numel, "fill", "x");
  float* p = x.f32();
  for (int64_t i = 0; i < x.numel; ++i) p[i] = value;
}

void CpuBackend::RoundThrough(TensorView x, DType storage) {
  Need(x, x.numel, "round_through", "x");
  LATTICE_CHECK_MSG(storage == DType::kBF16 || storage == DType::kF16,
                    "backend round_through: storage must be bf16 or f16");
  cpu::RoundThrough(x.f32(), x.numel, storage);
}

std::unique_ptr<Event> CpuBackend::CreateEvent() { return std::make_unique<CpuEvent>(); }

void CpuBackend::SetNumThreads(int n) { cpu::SetNumThreads(n); }
int CpuBackend::NumThreads() const { return cpu::NumThreads(); }

int CpuBackend::DefaultThreads(int affinity_cores, int node_cores, int local_ranks) const {
  return cpu::DefaultThreadsPerRank(affinity_cores, node_cores, local_ranks);
}

std::vector<std::pair<std::string, std::string>> CpuBackend::Properties() const {
  return {{"blas", cpu::BlasThreading()},
          {"gemm", cpu::GemmLibraryName()},
          {"kernels", cpu::KernelIsa()}};
}

double CpuBackend::GemmRate(int64_t m, int64_t n, int64_t k, double seconds) {
  return cpu::SgemmRate(m, n, k, seconds);
}

// ---- Device scalars --------------------------------------------------------------------------

void CpuBackend::ZeroScalars(DeviceScalars& s) {
  for (int i = 0; i < s.size(); ++i) s.data()[i] = 0.0;
}

void CpuBackend::AccumulateSum(DeviceScalars& s, int slot, ConstView x) {
  LATTICE_CHECK(slot >= 0 && slot < s.size());
  Need(x, x.numel, "accumulate_sum", "x");
  // In element order, in double: the loss sum the decoder has always returned.
  const float* p = x.f32();
  double sum = 0;
  for (int64_t i = 0; i < x.numel; ++i) sum += p[i];
  s.data()[slot] += sum;
}

void CpuBackend::AccumulateSumOfSquares(DeviceScalars& s, int slot, ConstView x) {
  LATTICE_CHECK(slot >= 0 && slot < s.size());
  Need(x, x.numel, "accumulate_sum_of_squares", "x");
  s.data()[slot] += cpu::SumOfSquares(x.f32(), x.numel);
}

void CpuBackend::ReadScalars(const DeviceScalars& s, double* host) {
  stream_.Synchronize();
  std::memcpy(host, s.data(), static_cast<size_t>(s.size()) * sizeof(double));
}

// ---- Ops ---------------------------------------------------------------------------------------

void CpuBackend::MatmulForward(TensorView out, ConstView inp, ConstView weight, ConstView bias,
                               int64_t n, int64_t c, int64_t oc) {
  Need(out, n * oc, "matmul.fwd", "out");
  Need(inp, n * c, "matmul.fwd", "inp");
  Need(weight, oc * c, "matmul.fwd", "weight");
  Opt(bias, oc, "matmul.fwd", "bias");
  cpu::MatmulForward(out.f32(), CF(inp), CF(weight), CF(bias), n, c, oc);
}

namespace {
void CheckMatmulBackward(const char* op, const TensorView& dinp, const TensorView& dweight,
                         const TensorView& dbias, const ConstView& dout, const ConstView& inp,
                         const ConstView& weight, int64_t n, int64_t c, int64_t oc) {
  Opt(dinp, n * c, op, "dinp");
  Opt(dweight, oc * c, op, "dweight");
  Opt(dbias, oc, op, "dbias");
  Need(dout, n * oc, op, "dout");
  if (dweight.present()) Need(inp, n * c, op, "inp");
  if (dinp.present()) Need(weight, oc * c, op, "weight");
}
}  // namespace

void CpuBackend::MatmulBackward(TensorView dinp, TensorView dweight, TensorView dbias,
                                ConstView dout, ConstView inp, ConstView weight, int64_t n,
                                int64_t c, int64_t oc) {
  CheckMatmulBackward("matmul.bwd", dinp, dweight, dbias, dout, inp, weight, n, c, oc);
  cpu::MatmulBackward(dinp.f32(), dweight.f32(), dbias.f32(), CF(dout), CF(inp), CF(weight), n,
                      c, oc);
}

void CpuBackend::MatmulBackwardTo(TensorView dinp, TensorView dweight, TensorView dbias,
                                  ConstView dout, ConstView inp, ConstView weight, int64_t n,
                                  int64_t c, int64_t oc) {
  CheckMatmulBackward("matmul.bwd", dinp, dweight, dbias, dout, inp, weight, n, c, oc);
  cpu::MatmulBackwardTo(dinp.f32(), dweight.f32(), dbias.f32(), CF(dout), CF(inp), CF(weight),
                        n, c, oc);
}

void CpuBackend::AddRowBias(TensorView x, ConstView bias, int64_t rows, int64_t c) {
  Need(x, rows * c, "add_row_bias", "x");
  Need(bias, c, "add_row_bias", "bias");
  profiler::Scope scope("add_row_bias", profiler::Category::kElementwise);
  float* p = x.f32();
  const float* b = bias.f32();
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t j = 0; j < c; ++j) p[i * c + j] += b[j];
  }
}

void CpuBackend::LayerNormForward(TensorView out, TensorView mean, TensorView rstd,
                                  ConstView inp, ConstView weight, ConstView bias, int64_t n,
                                  int64_t c, float eps) {
  Need(out, n * c, "layernorm.fwd", "out");
  Need(mean, n, "layernorm.fwd", "mean");
  Need(rstd, n, "layernorm.fwd", "rstd");
  Need(inp, n * c, "layernorm.fwd", "inp");
  Need(weight, c, "layernorm.fwd", "weight");
  Opt(bias, c, "layernorm.fwd", "bias");
  cpu::LayerNormForward(out.f32(), mean.f32(), rstd.f32(), CF(inp), CF(weight), CF(bias), n, c,
                        eps);
}

void CpuBackend::LayerNormBackward(TensorView dinp, TensorView dweight, TensorView dbias,
                                   ConstView dout, ConstView inp, ConstView weight,
                                   ConstView mean, ConstView rstd, int64_t n, int64_t c) {
  Need(dinp, n * c, "layernorm.bwd", "dinp");
  Need(dweight, c, "layernorm.bwd", "dweight");
  Opt(dbias, c, "layernorm.bwd", "dbias");
  Need(dout, n * c, "layernorm.bwd", "dout");
  Need(inp, n * c, "layernorm.bwd", "inp");
  Need(weight, c, "layernorm.bwd", "weight");
  Need(mean, n, "layernorm.bwd", "mean");
  Need(rstd, n, "layernorm.bwd", "rstd");
  cpu::LayerNormBackward(dinp.f32(), dweight.f32(), dbias.f32(), CF(dout), CF(inp), CF(weight),
                         CF(mean), CF(rstd), n, c);
}

void CpuBackend::RmsNormForward(TensorView out, TensorView rstd, ConstView inp, ConstView weight,
                                int64_t n, int64_t c, float eps) {
  Need(out, n * c, "rmsnorm.fwd", "out");
  Need(rstd, n, "rmsnorm.fwd", "rstd");
  Need(inp, n * c, "rmsnorm.fwd", "inp");
  Need(weight, c, "rmsnorm.fwd", "weight");
  cpu::RmsNormForward(out.f32(), rstd.f32(), CF(inp), CF(weight), n, c, eps);
}

void CpuBackend::RmsNormBackward(TensorView dinp, TensorView dweight, ConstView dout,
                                 ConstView inp, ConstView weight, ConstView rstd, int64_t n,
                                 int64_t c) {
  Need(dinp, n * c, "rmsnorm.bwd", "dinp");
  Need(dweight, c, "rmsnorm.bwd", "dweight");
  Need(dout, n * c, "rmsnorm.bwd", "dout");
  Need(inp, n * c, "rmsnorm.bwd", "inp");
  Need(weight, c, "rmsnorm.bwd", "weight");
  Need(rstd, n, "rmsnorm.bwd", "rstd");
  cpu::RmsNormBackward(dinp.f32(), dweight.f32(), CF(dout), CF(inp), CF(weight), CF(rstd), n, c);
}

namespace {
void CheckAttention(const char* op, const ConstView& qkv, const ConstView& out,
                    const ConstView& lse, int64_t b, int64_t t, int64_t h, int64_t kvh,
                    int64_t d) {
  Need(qkv, b * t * (h + 2 * kvh) * d, op, "qkv");
  Need(out, b * t * h * d, op, "out");
  Need(lse, b * h * t, op, "lse");
}
}  // namespace

void CpuBackend::AttentionForward(TensorView out, TensorView lse, ConstView qkv, int64_t b,
                                  int64_t t, int64_t h, int64_t kvh, int64_t d) {
  CheckAttention("attention.fwd", qkv, out, lse, b, t, h, kvh, d);
  cpu::AttentionForward(out.f32(), lse.f32(), CF(qkv), b, t, h, kvh, d);
}

void CpuBackend::AttentionBackward(TensorView dqkv, ConstView dout, ConstView qkv, ConstView out,
                                   ConstView lse, int64_t b, int64_t t, int64_t h, int64_t kvh,
                                   int64_t d) {
  CheckAttention("attention.bwd", qkv, out, lse, b, t, h, kvh, d);
  Need(dqkv, b * t * (h + 2 * kvh) * d, "attention.bwd", "dqkv");
  Need(dout, b * t * h * d, "attention.bwd", "dout");
  cpu::AttentionBackward(dqkv.f32(), CF(dout), CF(qkv), CF(out), CF(lse), b, t, h, kvh, d);
}

void CpuBackend::AttentionBackwardTo(TensorView dqkv, ConstView dout, ConstView qkv,
                                     ConstView out, ConstView lse, int64_t b, int64_t t,
                                     int64_t h, int64_t kvh, int64_t d) {
  CheckAttention("attention.bwd", qkv, out, lse, b, t, h, kvh, d);
  Need(dqkv, b * t * (h + 2 * kvh) * d, "attention.bwd", "dqkv");
  Need(dout, b * t * h * d, "attention.bwd", "dout");
  cpu::AttentionBackwardTo(dqkv.f32(), CF(dout), CF(qkv), CF(out), CF(lse), b, t, h, kvh, d);
}

void CpuBackend::AttentionDecode(TensorView out, ConstView q, ConstView k_cache,
                                 ConstView v_cache, int64_t len, int64_t h, int64_t kvh,
                                 int64_t d) {
  Need(out, h * d, "attention.decode", "out");
  Need(q, h * d, "attention.decode", "q");
  Need(k_cache, len * kvh * d, "attention.decode", "k_cache");
  Need(v_cache, len * kvh * d, "attention.decode", "v_cache");
  cpu::AttentionDecode(out.f32(), CF(q), CF(k_cache), CF(v_cache), len, h, kvh, d);
}

void CpuBackend::GeluForward(TensorView out, ConstView inp, int64_t n) {
  Need(out, n, "gelu.fwd", "out");
  Need(inp, n, "gelu.fwd", "inp");
  cpu::GeluForward(out.f32(), CF(inp), n);
}

void CpuBackend::GeluBackward(TensorView dinp, ConstView inp, ConstView dout, int64_t n) {
  Need(dinp, n, "gelu.bwd", "dinp");
  Need(inp, n, "gelu.bwd", "inp");
  Need(dout, n, "gelu.bwd", "dout");
  cpu::GeluBackward(dinp.f32(), CF(inp), CF(dout), n);
}

void CpuBackend::GeluBackwardTo(TensorView dinp, ConstView inp, ConstView dout, int64_t n) {
  Need(dinp, n, "gelu.bwd", "dinp");
  Need(inp, n, "gelu.bwd", "inp");
  Need(dout, n, "gelu.bwd", "dout");
  cpu::GeluBackwardTo(dinp.f32(), CF(inp), CF(dout), n);
}

void CpuBackend::BiasGeluForward(TensorView pre, TensorView out, ConstView bias, int64_t n,
                                 int64_t f) {
  Need(pre, n * f, "bias_gelu.fwd", "pre");
  Need(out, n * f, "bias_gelu.fwd", "out");
  Opt(bias, f, "bias_gelu.fwd", "bias");
  cpu::BiasGeluForward(pre.f32(), out.f32(), CF(bias), n, f);
}

void CpuBackend::SwiGluForward(TensorView out, ConstView inp, int64_t n, int64_t f) {
  Need(out, n * f, "swiglu.fwd", "out");
  Need(inp, n * 2 * f, "swiglu.fwd", "inp");
  cpu::SwiGluForward(out.f32(), CF(inp), n, f);
}

void CpuBackend::SwiGluBackward(TensorView dinp, ConstView inp, ConstView dout, int64_t n,
                                int64_t f) {
  Need(dinp, n * 2 * f, "swiglu.bwd", "dinp");
  Need(inp, n * 2 * f, "swiglu.bwd", "inp");
  Need(dout, n * f, "swiglu.bwd", "dout");
  cpu::SwiGluBackward(dinp.f32(), CF(inp), CF(dout), n, f);
}

namespace {
// Elements a rotation of `heads` heads in each of b*t rows touches from the view's start.
int64_t RopeExtent(int64_t b, int64_t t, int64_t heads, int64_t d, int64_t row_stride) {
  return b * t > 0 ? (b * t - 1) * row_stride + heads * d : 0;
}
}  // namespace

void CpuBackend::RopeForward(TensorView x, int64_t b, int64_t t, int64_t heads, int64_t d,
                             int64_t row_stride, int64_t pos_offset, float theta) {
  Need(x, RopeExtent(b, t, heads, d, row_stride), "rope.fwd", "x");
  cpu::RopeForward(x.f32(), b, t, heads, d, row_stride, pos_offset, theta);
}

void CpuBackend::RopeBackward(TensorView dx, int64_t b, int64_t t, int64_t heads, int64_t d,
                              int64_t row_stride, int64_t pos_offset, float theta) {
  Need(dx, RopeExtent(b, t, heads, d, row_stride), "rope.bwd", "dx");
  cpu::RopeBackward(dx.f32(), b, t, heads, d, row_stride, pos_offset, theta);
}

void CpuBackend::EmbeddingForward(TensorView out, ConstView tokens, ConstView wte, ConstView wpe,
                                  int64_t b, int64_t t, int64_t c, int64_t pos_offset) {
  Need(out, b * t * c, "embedding.fwd", "out");
  Need(tokens, b * t, "embedding.fwd", "tokens", DType::kI32);
  Need(wte, c, "embedding.fwd", "wte");
  Opt(wpe, (pos_offset + t) * c, "embedding.fwd", "wpe");
  cpu::EmbeddingForward(out.f32(), CI(tokens), CF(wte), CF(wpe), b, t, c, pos_offset);
}

void CpuBackend::EmbeddingBackward(TensorView dwte, TensorView dwpe, ConstView dout,
                                   ConstView tokens, int64_t b, int64_t t, int64_t c,
                                   int64_t pos_offset) {
  Need(dwte, c, "embedding.bwd", "dwte");
  Opt(dwpe, (pos_offset + t) * c, "embedding.bwd", "dwpe");
  Need(dout, b * t * c, "embedding.bwd", "dout");
  Need(tokens, b * t, "embedding.bwd", "tokens", DType::kI32);
  cpu::EmbeddingBackward(dwte.f32(), dwpe.f32(), CF(dout), CI(tokens), b, t, c, pos_offset);
}

void CpuBackend::PositionEmbeddingForward(TensorView x, ConstView wpe, int64_t rows, int64_t c,
                                          int64_t first_row, int64_t t, int64_t pos0) {
  Need(x, rows * c, "position_embedding.fwd", "x");
  Need(wpe, (pos0 + t) * c, "position_embedding.fwd", "wpe");
  profiler::Scope scope("position_embedding.fwd", profiler::Category::kElementwise);
  float* p = x.f32();
  const float* w = wpe.f32();
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < rows; ++i) {
    const float* e = w + ((first_row + i) % t + pos0) * c;
    for (int64_t j = 0; j < c; ++j) p[i * c + j] += e[j];
  }
}

void CpuBackend::PositionEmbeddingBackward(TensorView dwpe, ConstView dx, int64_t rows,
                                           int64_t c, int64_t first_row, int64_t t) {
  Need(dwpe, t * c, "position_embedding.bwd", "dwpe");
  Need(dx, rows * c, "position_embedding.bwd", "dx");
  profiler::Scope scope("position_embedding.bwd", profiler::Category::kElementwise);
  float* p = dwpe.f32();
  const float* g = dx.f32();
  for (int64_t i = 0; i < rows; ++i) {
    float* e = p + ((first_row + i) % t) * c;
    for (int64_t j = 0; j < c; ++j) e[j] += g[i * c + j];
  }
}

// ---- Document masking (packed examples) -------------------------------------------------

void CpuBackend::AttentionForwardDocs(TensorView out, TensorView lse, ConstView qkv,
                                      ConstView doc_starts, int64_t b, int64_t t, int64_t h,
                                      int64_t kvh, int64_t d) {
  CheckAttention("attention.fwd", qkv, out, lse, b, t, h, kvh, d);
  Need(doc_starts, b * t, "attention.fwd", "doc_starts", DType::kI32);
  cpu::AttentionForwardDocs(out.f32(), lse.f32(), CF(qkv), CI(doc_starts), b, t, h, kvh, d);
}

void CpuBackend::AttentionBackwardDocsTo(TensorView dqkv, ConstView dout, ConstView qkv,
                                         ConstView out, ConstView lse, ConstView doc_starts,
                                         int64_t b, int64_t t, int64_t h, int64_t kvh,
                                         int64_t d) {
  CheckAttention("attention.bwd", qkv, out, lse, b, t, h, kvh, d);
  Need(dqkv, b * t * (h + 2 * kvh) * d, "attention.bwd", "dqkv");
  Need(dout, b * t * h * d, "attention.bwd", "dout");
  Need(doc_starts, b * t, "attention.bwd", "doc_starts", DType::kI32);
  cpu::AttentionBackwardDocsTo(dqkv.f32(), CF(dout), CF(qkv), CF(out), CF(lse), CI(doc_starts),
                               b, t, h, kvh, d);
}

void CpuBackend::RopeForwardDocs(TensorView x, ConstView doc_starts, int64_t b, int64_t t,
                                 int64_t heads, int64_t d, int64_t row_stride, float theta) {
  Need(x, RopeExtent(b, t, heads, d, row_stride), "rope.fwd", "x");
  Need(doc_starts, b * t, "rope.fwd", "doc_starts", DType::kI32);
  cpu::RopeForwardDocs(x.f32(), CI(doc_starts), b, t, heads, d, row_stride, theta);
}

void CpuBackend::RopeBackwardDocs(TensorView dx, ConstView doc_starts, int64_t b, int64_t t,
                                  int64_t heads, int64_t d, int64_t row_stride, float theta) {
  Need(dx, RopeExtent(b, t, heads, d, row_stride), "rope.bwd", "dx");
  Need(doc_starts, b * t, "rope.bwd", "doc_starts", DType::kI32);
  cpu::RopeBackwardDocs(dx.f32(), CI(doc_starts), b, t, heads, d, row_stride, theta);
}

namespace {
// Position of token row r (of b*t) under doc_starts, checked to lie inside the row.
inline int64_t DocPosition(const int32_t* doc_starts, int64_t r, int64_t t) {
  const int64_t pos = r % t - doc_starts[r];
  LATTICE_CHECK_MSG(pos >= 0 && pos < t, "doc_starts[r] must lie in [0, r % t]");
  return pos;
}
}  // namespace

void CpuBackend::PositionEmbeddingForwardDocs(TensorView x, ConstView wpe, ConstView doc_starts,
                                              int64_t rows, int64_t c, int64_t first_row,
                                              int64_t t) {
  Need(x, rows * c, "position_embedding.fwd", "x");
  Need(wpe, t * c, "position_embedding.fwd", "wpe");
  Need(doc_starts, first_row + rows, "position_embedding.fwd", "doc_starts", DType::kI32);
  profiler::Scope scope("position_embedding.fwd", profiler::Category::kElementwise);
  float* p = x.f32();
  const float* w = wpe.f32();
  const int32_t* ds = CI(doc_starts);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < rows; ++i) {
    const float* e = w + DocPosition(ds, first_row + i, t) * c;
    for (int64_t j = 0; j < c; ++j) p[i * c + j] += e[j];
  }
}

void CpuBackend::PositionEmbeddingBackwardDocs(TensorView dwpe, ConstView dx,
                                               ConstView doc_starts, int64_t rows, int64_t c,
                                               int64_t first_row, int64_t t) {
  Need(dwpe, t * c, "position_embedding.bwd", "dwpe");
  Need(dx, rows * c, "position_embedding.bwd", "dx");
  Need(doc_starts, first_row + rows, "position_embedding.bwd", "doc_starts", DType::kI32);
  profiler::Scope scope("position_embedding.bwd", profiler::Category::kElementwise);
  float* p = dwpe.f32();
  const float* g = dx.f32();
  const int32_t* ds = CI(doc_starts);
  // Serial over rows: positions repeat within and across rows (a fixed order, no races).
  for (int64_t i = 0; i < rows; ++i) {
    float* e = p + DocPosition(ds, first_row + i, t) * c;
    for (int64_t j = 0; j < c; ++j) e[j] += g[i * c + j];
  }
}

void CpuBackend::CrossEntropyForward(TensorView losses, ConstView logits, ConstView targets,
                                     ConstView loss_mask, int64_t n, int64_t v, int64_t vp) {
  Need(losses, n, "cross_entropy.fwd", "losses");
  Need(logits, n * vp, "cross_entropy.fwd", "logits");
  Need(targets, n, "cross_entropy.fwd", "targets", DType::kI32);
  Opt(loss_mask, n, "cross_entropy.fwd", "loss_mask");
  cpu::CrossEntropyForward(losses.f32(), CF(logits), CI(targets), CF(loss_mask), n, v, vp);
}

void CpuBackend::CrossEntropyBackward(TensorView dlogits, ConstView logits, ConstView targets,
                                      ConstView loss_mask, float dloss, int64_t n, int64_t v,
                                      int64_t vp) {
  Need(dlogits, n * vp, "cross_entropy.bwd", "dlogits");
  Need(logits, n * vp, "cross_entropy.bwd", "logits");
  Need(targets, n, "cross_entropy.bwd", "targets", DType::kI32);
  Opt(loss_mask, n, "cross_entropy.bwd", "loss_mask");
  cpu::CrossEntropyBackward(dlogits.f32(), CF(logits), CI(targets), CF(loss_mask), dloss, n, v,
                            vp);
}

void CpuBackend::CrossEntropyForwardProbs(TensorView losses, TensorView logits,
                                          ConstView targets, ConstView loss_mask, int64_t n,
                                          int64_t v, int64_t vp) {
  Need(losses, n, "cross_entropy.fwd", "losses");
  Need(logits, n * vp, "cross_entropy.fwd", "logits");
  Need(targets, n, "cross_entropy.fwd", "targets", DType::kI32);
  Opt(loss_mask, n, "cross_entropy.fwd", "loss_mask");
  cpu::CrossEntropyForwardProbs(losses.f32(), logits.f32(), CI(targets), CF(loss_mask), n, v,
                                vp);
}

void CpuBackend::CrossEntropyBackwardProbs(TensorView probs, ConstView targets,
                                           ConstView loss_mask, float dloss, int64_t n, int64_t v,
                                           int64_t vp) {
  Need(probs, n * vp, "cross_entropy.bwd", "probs");
  Need(targets, n, "cross_entropy.bwd", "targets", DType::kI32);
  Opt(loss_mask, n, "cross_entropy.bwd", "loss_mask");
  cpu::CrossEntropyBackwardProbs(probs.f32(), CI(targets), CF(loss_mask), dloss, n, v, vp);
}

void CpuBackend::CrossEntropyShardMax(TensorView row_max, ConstView logits, int64_t n,
                                      int64_t cols, int64_t col_begin, int64_t v) {
  Need(row_max, n, "cross_entropy_shard.max", "row_max");
  Need(logits, n * cols, "cross_entropy_shard.max", "logits");
  cpu::CrossEntropyShardMax(row_max.f32(), CF(logits), n, cols, col_begin, v);
}

void CpuBackend::CrossEntropyShardStats(TensorView sum_exp, TensorView target_logit,
                                        ConstView logits, ConstView targets, ConstView row_max,
                                        int64_t n, int64_t cols, int64_t col_begin, int64_t v) {
  Need(sum_exp, n, "cross_entropy_shard.stats", "sum_exp");
  Need(target_logit, n, "cross_entropy_shard.stats", "target_logit");
  Need(logits, n * cols, "cross_entropy_shard.stats", "logits");
  Need(targets, n, "cross_entropy_shard.stats", "targets", DType::kI32);
  Need(row_max, n, "cross_entropy_shard.stats", "row_max");
  cpu::CrossEntropyShardStats(sum_exp.f32(), target_logit.f32(), CF(logits), CI(targets),
                              CF(row_max), n, cols, col_begin, v);
}

void CpuBackend::CrossEntropyShardLoss(TensorView losses, ConstView row_max, ConstView sum_exp,
                                       ConstView target_logit, ConstView targets,
                                       ConstView loss_mask, int64_t n) {
  Need(losses, n, "cross_entropy_shard.loss", "losses");
  Need(row_max, n, "cross_entropy_shard.loss", "row_max");
  Need(sum_exp, n, "cross_entropy_shard.loss", "sum_exp");
  Need(target_logit, n, "cross_entropy_shard.loss", "target_logit");
  Need(targets, n, "cross_entropy_shard.loss", "targets", DType::kI32);
  Opt(loss_mask, n, "cross_entropy_shard.loss", "loss_mask");
  cpu::CrossEntropyShardLoss(losses.f32(), CF(row_max), CF(sum_exp), CF(target_logit),
                             CI(targets), CF(loss_mask), n);
}

void CpuBackend::CrossEntropyShardBackward(TensorView dlogits, ConstView logits,
                                           ConstView targets, ConstView loss_mask,
                                           ConstView row_max, ConstView sum_exp, float dloss,
                                           int64_t n, int64_t cols, int64_t col_begin,
                                           int64_t v) {
  Need(dlogits, n * cols, "cross_entropy_shard.bwd", "dlogits");
  Need(logits, n * cols, "cross_entropy_shard.bwd", "logits");
  Need(targets, n, "cross_entropy_shard.bwd", "targets", DType::kI32);
  Opt(loss_mask, n, "cross_entropy_shard.bwd", "loss_mask");
  Need(row_max, n, "cross_entropy_shard.bwd", "row_max");
  Need(sum_exp, n, "cross_entropy_shard.bwd", "sum_exp");
  cpu::CrossEntropyShardBackward(dlogits.f32(), CF(logits), CI(targets), CF(loss_mask),
                                 CF(row_max), CF(sum_exp), dloss, n, cols, col_begin, v);
}

void CpuBackend::ClassifierForwardBackward(TensorView dhidden, TensorView dweight,
                                           TensorView scratch, ConstView hidden,
                                           ConstView weight, ConstView targets,
                                           ConstView loss_mask, const cpu::ClassifierArgs& args,
                                           const cpu::ClassifierAllReduce& reduce,
                                           DeviceScalars& s, int slot) {
  LATTICE_CHECK(slot >= 0 && slot < s.size());
  Need(dhidden, args.n * args.c, "classifier", "dhidden");
  Opt(dweight, args.rows * args.c, "classifier", "dweight");
  Need(scratch, cpu::ClassifierScratchFloats(args.chunk_tokens, args.rows), "classifier",
       "scratch");
  Need(hidden, args.n * args.c, "classifier", "hidden");
  Need(weight, args.rows * args.c, "classifier", "weight");
  Need(targets, args.n, "classifier", "targets", DType::kI32);
  Opt(loss_mask, args.n, "classifier", "loss_mask");
  const cpu::ClassifierLoss loss = cpu::ClassifierForwardBackward(
      dhidden.f32(), dweight.f32(), scratch.f32(), CF(hidden), CF(weight), CI(targets),
      CF(loss_mask), args, reduce);
  s.data()[slot] += loss.loss_sum;
}

void CpuBackend::ClassifierForward(TensorView scratch, ConstView hidden, ConstView weight,
                                   ConstView targets, ConstView loss_mask,
                                   const cpu::ClassifierArgs& args,
                                   const cpu::ClassifierAllReduce& reduce, DeviceScalars& s,
                                   int slot) {
  LATTICE_CHECK(slot >= 0 && slot < s.size());
  Need(scratch, cpu::ClassifierScratchFloats(args.chunk_tokens, args.rows), "classifier",
       "scratch");
  Need(hidden, args.n * args.c, "classifier", "hidden");
  Need(weight, args.rows * args.c, "classifier", "weight");
  Need(targets, args.n, "classifier", "targets", DType::kI32);
  Opt(loss_mask, args.n, "classifier", "loss_mask");
  const cpu::ClassifierLoss loss = cpu::ClassifierForward(scratch.f32(), CF(hidden), CF(weight),
                                                          CI(targets), CF(loss_mask), args,
                                                          reduce);
  s.data()[slot] += loss.loss_sum;
}

void CpuBackend::EmbeddingShardForward(TensorView out, ConstView tokens, ConstView wte_rows,
                                       int64_t row_begin, int64_t rows, int64_t n, int64_t c) {
  Need(out, n * c, "embedding_shard.fwd", "out");
  Need(tokens, n, "embedding_shard.fwd", "tokens", DType::kI32);
  Need(wte_rows, rows * c, "embedding_shard.fwd", "wte_rows");
  cpu::EmbeddingShardForward(out.f32(), CI(tokens), CF(wte_rows), row_begin, rows, n, c);
}

void CpuBackend::EmbeddingShardBackward(TensorView dwte_rows, ConstView dout, ConstView tokens,
                                        int64_t row_begin, int64_t rows, int64_t n, int64_t c) {
  Need(dwte_rows, rows * c, "embedding_shard.bwd", "dwte_rows");
  Need(dout, n * c, "embedding_shard.bwd", "dout");
  Need(tokens, n, "embedding_shard.bwd", "tokens", DType::kI32);
  cpu::EmbeddingShardBackward(dwte_rows.f32(), CF(dout), CI(tokens), row_begin, rows, n, c);
}

void CpuBackend::ResidualForward(TensorView out, ConstView a, ConstView b, int64_t n) {
  Need(out, n, "residual.fwd", "out");
  Need(a, n, "residual.fwd", "a");
  Need(b, n, "residual.fwd", "b");
  cpu::ResidualForward(out.f32(), CF(a), CF(b), n);
}

void CpuBackend::ResidualBackward(TensorView da, TensorView db, ConstView dout, int64_t n) {
  Need(da, n, "residual.bwd", "da");
  Need(db, n, "residual.bwd", "db");
  Need(dout, n, "residual.bwd", "dout");
  cpu::ResidualBackward(da.f32(), db.f32(), CF(dout), n);
}

void CpuBackend::AdamWUpdate(TensorView param, ConstView grad, TensorView m, TensorView v,
                             int64_t n, const AdamWArgs& args) {
  Need(param, n, "adamw", "param");
  Need(grad, n, "adamw", "grad");
  Need(m, n, "adamw", "m");
  Need(v, n, "adamw", "v");
  cpu::AdamWUpdate(param.f32(), CF(grad), m.f32(), v.f32(), n, args);
}

void CpuBackend::Scale(TensorView x, int64_t n, float scale) {
  Need(x, n, "scale", "x");
  cpu::Scale(x.f32(), n, scale);
}

void CpuBackend::FillNormal(TensorView x, uint64_t seed, const std::string& stream,
                            int64_t rows, int64_t cols, int64_t stride, int64_t first_index,
                            int64_t index_stride, float std) {
  Need(x, rows > 0 ? (rows - 1) * stride + cols : 0, "fill_normal", "x");
  const CounterRng rng(seed, stream);
  float* p = x.f32();
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    float* row = p + r * stride;
    const int64_t g = first_index + r * index_stride;
    for (int64_t c = 0; c < cols; ++c) row[c] = std * rng.Normal(static_cast<uint64_t>(g + c));
  }
}

}  // namespace lattice::kernels
