#include "kernels/cuda/cuda_backend.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "absl/strings/str_cat.h"

#if LATTICE_HAVE_CUDA
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include "kernels/backend_checks.h"
#include "kernels/cuda/launch.h"
#include "kernels/mixed_precision.h"
#include "runtime/rng.h"
#include "runtime/status.h"
#endif

namespace lattice::kernels::cuda {

#if !LATTICE_HAVE_CUDA

bool Built() { return false; }
int DeviceCount(std::string* why) {
  if (why != nullptr) *why = "this lattice was built without CUDA (CMake found no nvcc)";
  return 0;
}
absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(int device) {
  return absl::UnimplementedError(
      "the CUDA backend is not in this build: configure with nvcc on the PATH or "
      "-DCMAKE_CUDA_COMPILER=/usr/local/cuda/bin/nvcc (CMake option LATTICE_CUDA)");
}
absl::Status BackendError(const Backend&) { return absl::OkStatus(); }

#else  // LATTICE_HAVE_CUDA

namespace {

Float FloatOf(DType t) {
  switch (t) {
    case DType::kBF16:
      return Float::kBF16;
    case DType::kF16:
      return Float::kF16;
    default:
      return Float::kF32;
  }
}
bool IsFloat(DType t) { return t == DType::kF32 || t == DType::kBF16 || t == DType::kF16; }

class CudaStorage final : public Storage {
 public:
  CudaStorage(void* data, size_t bytes, int device) : data_(data), bytes_(bytes), device_(device) {}
  ~CudaStorage() override {
    if (data_ != nullptr) cudaFree(data_);
  }
  CudaStorage(const CudaStorage&) = delete;
  CudaStorage& operator=(const CudaStorage&) = delete;
  void* data() override { return data_; }
  size_t bytes() const override { return bytes_; }
  Device device() const override { return Device{DeviceType::kCuda, device_}; }

 private:
  void* data_;
  size_t bytes_;
  int device_;
};

class CudaStream final : public Stream {
 public:
  explicit CudaStream(cudaStream_t s) : s_(s) {}
  void Synchronize() override { cudaStreamSynchronize(s_); }
  cudaStream_t get() const { return s_; }

 private:
  cudaStream_t s_;
};

class CudaEvent final : public Event {
 public:
  CudaEvent() { cudaEventCreateWithFlags(&e_, cudaEventDisableTiming); }
  ~CudaEvent() override { cudaEventDestroy(e_); }
  void Record(Stream& stream) override {
    cudaEventRecord(e_, static_cast<CudaStream&>(stream).get());
  }
  bool Query() const override { return cudaEventQuery(e_) == cudaSuccess; }
  void Synchronize() override { cudaEventSynchronize(e_); }

 private:
  cudaEvent_t e_{};
};

// cuBLAS takes int dimensions.
int Dim(int64_t x, const char* op) {
  LATTICE_CHECK_MSG(x >= 0 && x <= INT_MAX, absl::StrCat("backend op ", op, ": dimension ", x,
                                                         " does not fit cuBLAS's int"));
  return static_cast<int>(x);
}

class CudaBackend final : public Backend {
 public:
  CudaBackend(int device, cudaStream_t stream, cublasHandle_t blas, bool tf32)
      : device_(device), stream_(stream), blas_(blas), tf32_(tf32) {
    partials_ = AllocateStorage(kReduceBlocks * sizeof(double));
  }
  ~CudaBackend() override {
    cudaStreamSynchronize(stream_.get());
    partials_.reset();
    scratch_.reset();
    cublasDestroy(blas_);
    cudaStreamDestroy(stream_.get());
  }

  std::string name() const override { return "cuda"; }
  Device device() const override { return Device{DeviceType::kCuda, device_}; }
  const absl::Status& error() const { return error_; }

  // ---- Memory, copies, ordering ----
  std::shared_ptr<Storage> AllocateStorage(int64_t bytes) override {
    void* p = nullptr;
    const size_t n = static_cast<size_t>(std::max<int64_t>(bytes, 1));
    const cudaError_t e = cudaMalloc(&p, n);
    LATTICE_CHECK_MSG(e == cudaSuccess, absl::StrCat("cudaMalloc of ", bytes, " bytes on GPU ",
                                                     device_, ": ", cudaGetErrorString(e)));
    Api(cudaMemsetAsync(p, 0, n, stream_.get()), "allocate (zero fill)");
    ++allocations_;
    return std::make_shared<CudaStorage>(p, static_cast<size_t>(bytes), device_);
  }
  int64_t storage_allocations() const override { return allocations_; }
  DeviceScalars AllocateScalars(int n) override {
    LATTICE_CHECK(n > 0);
    return DeviceScalars(AllocateStorage(static_cast<int64_t>(n) * sizeof(double)), n);
  }
  void Cast(TensorView dst, ConstView src) override {
    LATTICE_CHECK_MSG(dst.numel >= src.numel, "backend cast: destination too small");
    if (dst.dtype == src.dtype) return Copy(dst, src);
    LATTICE_CHECK_MSG(IsFloat(dst.dtype) && IsFloat(src.dtype),
                      "backend cast: integer views copy only to the same dtype");
    cuda::Cast(dst.data, FloatOf(dst.dtype), src.data, FloatOf(src.dtype), src.numel, s());
    Launched("cast");
  }
  void Copy(TensorView dst, ConstView src) override {
    Need(dst, src.numel, "copy", "dst", src.dtype);
    if (src.numel > 0) {
      Api(cudaMemcpyAsync(dst.data, src.data, Bytes(src), cudaMemcpyDeviceToDevice, s()), "copy");
    }
  }
  void CopyFromHost(TensorView dst, const void* host, DType host_dtype, int64_t n) override {
    LATTICE_CHECK_MSG(dst.numel >= n, "backend copy from host: destination too small");
    if (n <= 0) return;
    const void* from = host;
    std::vector<char> staged;
    if (host_dtype != dst.dtype) {  // cast on the host (set-up and checkpoint paths only)
      staged.resize(static_cast<size_t>(n) * DTypeSize(dst.dtype));
      cpu::Cast(staged.data(), dst.dtype, host, host_dtype, n);
      from = staged.data();
    }
    Api(cudaMemcpyAsync(dst.data, from, static_cast<size_t>(n) * DTypeSize(dst.dtype),
                        cudaMemcpyHostToDevice, s()),
        "copy from host");
    stream_.Synchronize();  // the host buffer may go away when this returns
  }
  void CopyToHost(void* host, DType host_dtype, ConstView src, int64_t n) override {
    LATTICE_CHECK_MSG(src.numel >= n, "backend copy to host: source too small");
    if (n <= 0) return;
    std::vector<char> staged;
    void* to = host;
    if (host_dtype != src.dtype) {
      staged.resize(static_cast<size_t>(n) * DTypeSize(src.dtype));
      to = staged.data();
    }
    Api(cudaMemcpyAsync(to, src.data, static_cast<size_t>(n) * DTypeSize(src.dtype),
                        cudaMemcpyDeviceToHost, s()),
        "copy to host");
    stream_.Synchronize();
    if (to != host) cpu::Cast(host, host_dtype, staged.data(), src.dtype, n);
  }
  void Zero(TensorView x) override {
    if (x.numel > 0) {
      Api(cudaMemsetAsync(x.data, 0, static_cast<size_t>(x.numel) * DTypeSize(x.dtype), s()),
          "zero");
    }
  }
  void Fill(TensorView x, float value) override {
    Need(x, x.numel, "fill", "x");
    cuda::Fill(x.f32(), x.numel, value, s());
    Launched("fill");
  }
  void RoundThrough(TensorView x, DType storage) override {
    Need(x, x.numel, "round_through", "x");
    LATTICE_CHECK_MSG(storage == DType::kBF16 || storage == DType::kF16,
                      "backend round_through: storage must be bf16 or f16");
    cuda::RoundThrough(x.f32(), x.numel, FloatOf(storage), s());
    Launched("round_through");
  }
  Stream& stream() override { return stream_; }
  std::unique_ptr<Event> CreateEvent() override { return std::make_unique<CudaEvent>(); }
  void SetNumThreads(int n) override { threads_ = std::max(1, n); }
  int NumThreads() const override { return threads_; }
  // Host threads (data loading, checkpoint writing) of a rank that drives one GPU: its cores.
  int DefaultThreads(int affinity_cores, int node_cores, int local_ranks) const override {
    return std::max(1, affinity_cores);
  }
  std::vector<std::pair<std::string, std::string>> Properties() const override {
    cudaDeviceProp p{};
    cudaGetDeviceProperties(&p, device_);
    int blas_version = 0;
    cublasGetVersion(blas_, &blas_version);
    return {{"device", absl::StrCat("GPU ", device_, " ", p.name)},
            {"compute_capability", absl::StrCat(p.major, ".", p.minor)},
            {"memory_gib", absl::StrCat(static_cast<double>(p.totalGlobalMem) / (1 << 30))},
            {"cublas", absl::StrCat(blas_version)},
            {"gemm", tf32_ ? "cublas tf32" : "cublas fp32"}};
  }
  double GemmRate(int64_t m, int64_t n, int64_t k, double seconds) override {
    // Random operands (zeros can run faster than real data) and device events around the
    // timed products, after one untimed call.
    std::mt19937 gen(1);
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    std::vector<float> host(static_cast<size_t>(std::max({m * k, k * n, m * n})));
    for (float& x : host) x = u(gen);
    auto a = AllocateStorage(m * k * 4), b = AllocateStorage(k * n * 4), c = AllocateStorage(m * n * 4);
    CopyFromHost(TensorView{a->data(), DType::kF32, m * k}, host.data(), DType::kF32, m * k);
    CopyFromHost(TensorView{b->data(), DType::kF32, k * n}, host.data(), DType::kF32, k * n);
    auto run = [&] {
      MatmulForward(TensorView{c->data(), DType::kF32, m * n},
                    ConstView(a->data(), DType::kF32, m * k), ConstView(b->data(), DType::kF32, k * n),
                    ConstView(), m, k, n);
    };
    run();
    cudaEvent_t start, stop;
    cudaEventCreate(&start);
    cudaEventCreate(&stop);
    int reps = 0;
    float ms = 0;
    cudaEventRecord(start, s());
    while (ms < seconds * 1000.0) {
      for (int i = 0; i < 10; ++i) run();
      reps += 10;
      cudaEventRecord(stop, s());
      cudaEventSynchronize(stop);
      cudaEventElapsedTime(&ms, start, stop);
    }
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
    return 2.0 * m * n * k * reps / (ms * 1e-3) / 1e9;
  }

  // ---- Device scalars ----
  void ZeroScalars(DeviceScalars& sc) override {
    Api(cudaMemsetAsync(sc.data(), 0, static_cast<size_t>(sc.size()) * sizeof(double), s()),
        "zero scalars");
  }
  void AccumulateSum(DeviceScalars& sc, int slot, ConstView x) override {
    Sum(sc, slot, x, /*squares=*/false, "accumulate_sum");
  }
  void AccumulateSumOfSquares(DeviceScalars& sc, int slot, ConstView x) override {
    Sum(sc, slot, x, /*squares=*/true, "accumulate_sum_of_squares");
  }
  void ReadScalars(const DeviceScalars& sc, double* host) override {
    Api(cudaMemcpyAsync(host, sc.data(), static_cast<size_t>(sc.size()) * sizeof(double),
                        cudaMemcpyDeviceToHost, s()),
        "read scalars");
    stream_.Synchronize();
  }

  // ---- Ops ----
  void MatmulForward(TensorView out, ConstView inp, ConstView weight, ConstView bias, int64_t n,
                     int64_t c, int64_t oc) override {
    Need(out, n * oc, "matmul_forward", "out");
    Need(inp, n * c, "matmul_forward", "inp");
    Need(weight, oc * c, "matmul_forward", "weight");
    Opt(bias, oc, "matmul_forward", "bias");
    // Row-major out (n, oc) = inp (n, c) weight^T is column-major out^T (oc, n) =
    // weight^T^T (oc, c) inp^T (c, n): weight read transposed, inp as it is.
    const float one = 1.0f, zero = 0.0f;
    Blas(cublasSgemm(blas_, CUBLAS_OP_T, CUBLAS_OP_N, Dim(oc, "matmul"), Dim(n, "matmul"),
                     Dim(c, "matmul"), &one, weight.f32(), Dim(c, "matmul"), inp.f32(),
                     Dim(c, "matmul"), &zero, out.f32(), Dim(oc, "matmul")),
         "matmul_forward");
    if (bias.present()) {
      cuda::AddRowBias(out.f32(), bias.f32(), n, oc, s());
      Launched("matmul_forward (bias)");
    }
  }
  void MatmulBackward(TensorView dinp, TensorView dweight, TensorView dbias, ConstView dout,
                      ConstView inp, ConstView weight, int64_t n, int64_t c,
                      int64_t oc) override {
    Backward(dinp, dweight, dbias, dout, inp, weight, n, c, oc, /*dinp_beta=*/1.0f,
             "matmul_backward");
  }
  void MatmulBackwardTo(TensorView dinp, TensorView dweight, TensorView dbias, ConstView dout,
                        ConstView inp, ConstView weight, int64_t n, int64_t c,
                        int64_t oc) override {
    Backward(dinp, dweight, dbias, dout, inp, weight, n, c, oc, /*dinp_beta=*/0.0f,
             "matmul_backward_to");
  }
  void AddRowBias(TensorView x, ConstView bias, int64_t rows, int64_t c) override {
    Need(x, rows * c, "add_row_bias", "x");
    Need(bias, c, "add_row_bias", "bias");
    cuda::AddRowBias(x.f32(), bias.f32(), rows, c, s());
    Launched("add_row_bias");
  }
  void LayerNormForward(TensorView out, TensorView mean, TensorView rstd, ConstView inp,
                        ConstView weight, ConstView bias, int64_t n, int64_t c,
                        float eps) override {
    Need(out, n * c, "layernorm_forward", "out");
    Need(mean, n, "layernorm_forward", "mean");
    Need(rstd, n, "layernorm_forward", "rstd");
    Need(inp, n * c, "layernorm_forward", "inp");
    Need(weight, c, "layernorm_forward", "weight");
    Opt(bias, c, "layernorm_forward", "bias");
    cuda::LayerNormForward(out.f32(), mean.f32(), rstd.f32(), inp.f32(), weight.f32(),
                           bias.f32(), n, c, eps, s());
    Launched("layernorm_forward");
  }
  void LayerNormBackward(TensorView dinp, TensorView dweight, TensorView dbias, ConstView dout,
                         ConstView inp, ConstView weight, ConstView mean, ConstView rstd,
                         int64_t n, int64_t c) override {
    Opt(dinp, n * c, "layernorm_backward", "dinp");
    Opt(dweight, c, "layernorm_backward", "dweight");
    Opt(dbias, c, "layernorm_backward", "dbias");
    Need(dout, n * c, "layernorm_backward", "dout");
    Need(inp, n * c, "layernorm_backward", "inp");
    Need(weight, c, "layernorm_backward", "weight");
    Need(mean, n, "layernorm_backward", "mean");
    Need(rstd, n, "layernorm_backward", "rstd");
    cuda::LayerNormBackward(dinp.f32(), dweight.f32(), dbias.f32(), dout.f32(), inp.f32(),
                            weight.f32(), mean.f32(), rstd.f32(), n, c, s());
    Launched("layernorm_backward");
  }
  void RmsNormForward(TensorView out, TensorView rstd, ConstView inp, ConstView weight,
                      int64_t n, int64_t c, float eps) override {
    Need(out, n * c, "rmsnorm_forward", "out");
    Need(rstd, n, "rmsnorm_forward", "rstd");
    Need(inp, n * c, "rmsnorm_forward", "inp");
    Need(weight, c, "rmsnorm_forward", "weight");
    cuda::RmsNormForward(out.f32(), rstd.f32(), inp.f32(), weight.f32(), n, c, eps, s());
    Launched("rmsnorm_forward");
  }
  void RmsNormBackward(TensorView dinp, TensorView dweight, ConstView dout, ConstView inp,
                       ConstView weight, ConstView rstd, int64_t n, int64_t c) override {
    Opt(dinp, n * c, "rmsnorm_backward", "dinp");
    Opt(dweight, c, "rmsnorm_backward", "dweight");
    Need(dout, n * c, "rmsnorm_backward", "dout");
    Need(inp, n * c, "rmsnorm_backward", "inp");
    Need(weight, c, "rmsnorm_backward", "weight");
    Need(rstd, n, "rmsnorm_backward", "rstd");
    cuda::RmsNormBackward(dinp.f32(), dweight.f32(), dout.f32(), inp.f32(), weight.f32(),
                          rstd.f32(), n, c, s());
    Launched("rmsnorm_backward");
  }
  void AttentionForward(TensorView out, TensorView lse, ConstView qkv, int64_t b, int64_t t,
                        int64_t h, int64_t kvh, int64_t d) override {
    CheckHeads(h, kvh, d, "attention_forward");
    Need(out, b * t * h * d, "attention_forward", "out");
    Need(lse, b * h * t, "attention_forward", "lse");
    Need(qkv, b * t * (h + 2 * kvh) * d, "attention_forward", "qkv");
    cuda::AttentionForward(out.f32(), lse.f32(), qkv.f32(), b, t, h, kvh, d, s());
    Launched("attention_forward");
  }
  void AttentionBackward(TensorView dqkv, ConstView dout, ConstView qkv, ConstView out,
                         ConstView lse, int64_t b, int64_t t, int64_t h, int64_t kvh,
                         int64_t d) override {
    AttnBackward(dqkv, dout, qkv, out, lse, b, t, h, kvh, d, true, "attention_backward");
  }
  void AttentionBackwardTo(TensorView dqkv, ConstView dout, ConstView qkv, ConstView out,
                           ConstView lse, int64_t b, int64_t t, int64_t h, int64_t kvh,
                           int64_t d) override {
    AttnBackward(dqkv, dout, qkv, out, lse, b, t, h, kvh, d, false, "attention_backward_to");
  }
  void AttentionDecode(TensorView out, ConstView q, ConstView k_cache, ConstView v_cache,
                       int64_t len, int64_t h, int64_t kvh, int64_t d) override {
    CheckHeads(h, kvh, d, "attention_decode");
    Need(out, h * d, "attention_decode", "out");
    Need(q, h * d, "attention_decode", "q");
    Need(k_cache, len * kvh * d, "attention_decode", "k_cache");
    Need(v_cache, len * kvh * d, "attention_decode", "v_cache");
    cuda::AttentionDecode(out.f32(), q.f32(), k_cache.f32(), v_cache.f32(), len, h, kvh, d, s());
    Launched("attention_decode");
  }
  void GeluForward(TensorView out, ConstView inp, int64_t n) override {
    Need(out, n, "gelu_forward", "out");
    Need(inp, n, "gelu_forward", "inp");
    cuda::GeluForward(out.f32(), inp.f32(), n, s());
    Launched("gelu_forward");
  }
  void GeluBackward(TensorView dinp, ConstView inp, ConstView dout, int64_t n) override {
    GeluBack(dinp, inp, dout, n, true, "gelu_backward");
  }
  void GeluBackwardTo(TensorView dinp, ConstView inp, ConstView dout, int64_t n) override {
    GeluBack(dinp, inp, dout, n, false, "gelu_backward_to");
  }
  void BiasGeluForward(TensorView pre, TensorView out, ConstView bias, int64_t n,
                       int64_t f) override {
    Need(pre, n * f, "bias_gelu_forward", "pre");
    Need(out, n * f, "bias_gelu_forward", "out");
    Opt(bias, f, "bias_gelu_forward", "bias");
    cuda::BiasGeluForward(pre.f32(), out.f32(), bias.f32(), n, f, s());
    Launched("bias_gelu_forward");
  }
  void SwiGluForward(TensorView out, ConstView inp, int64_t n, int64_t f) override {
    Need(out, n * f, "swiglu_forward", "out");
    Need(inp, n * 2 * f, "swiglu_forward", "inp");
    cuda::SwiGluForward(out.f32(), inp.f32(), n, f, s());
    Launched("swiglu_forward");
  }
  void SwiGluBackward(TensorView dinp, ConstView inp, ConstView dout, int64_t n,
                      int64_t f) override {
    Need(dinp, n * 2 * f, "swiglu_backward", "dinp");
    Need(inp, n * 2 * f, "swiglu_backward", "inp");
    Need(dout, n * f, "swiglu_backward", "dout");
    cuda::SwiGluBackward(dinp.f32(), inp.f32(), dout.f32(), n, f, s());
    Launched("swiglu_backward");
  }
  void RopeForward(TensorView x, int64_t b, int64_t t, int64_t heads, int64_t d,
                   int64_t row_stride, int64_t pos_offset, float theta) override {
    RopeOp(x, b, t, heads, d, row_stride, pos_offset, theta, 1.0f, "rope_forward");
  }
  void RopeBackward(TensorView dx, int64_t b, int64_t t, int64_t heads, int64_t d,
                    int64_t row_stride, int64_t pos_offset, float theta) override {
    RopeOp(dx, b, t, heads, d, row_stride, pos_offset, theta, -1.0f, "rope_backward");
  }
  void EmbeddingForward(TensorView out, ConstView tokens, ConstView wte, ConstView wpe, int64_t b,
                        int64_t t, int64_t c, int64_t pos_offset) override {
    Need(out, b * t * c, "embedding_forward", "out");
    Need(tokens, b * t, "embedding_forward", "tokens", DType::kI32);
    Need(wte, c, "embedding_forward", "wte");
    Opt(wpe, (pos_offset + t) * c, "embedding_forward", "wpe");
    cuda::EmbeddingForward(out.f32(), tokens.i32(), wte.f32(), wpe.f32(), b, t, c, pos_offset,
                           s());
    Launched("embedding_forward");
  }
  void EmbeddingBackward(TensorView dwte, TensorView dwpe, ConstView dout, ConstView tokens,
                         int64_t b, int64_t t, int64_t c, int64_t pos_offset) override {
    Opt(dwte, c, "embedding_backward", "dwte");
    Opt(dwpe, (pos_offset + t) * c, "embedding_backward", "dwpe");
    Need(dout, b * t * c, "embedding_backward", "dout");
    Need(tokens, b * t, "embedding_backward", "tokens", DType::kI32);
    cuda::EmbeddingBackward(dwte.f32(), dwpe.f32(), dout.f32(), tokens.i32(), b, t, c,
                            pos_offset, s());
    Launched("embedding_backward");
  }
  void PositionEmbeddingForward(TensorView x, ConstView wpe, int64_t rows, int64_t c,
                                int64_t first_row, int64_t t, int64_t pos0) override {
    Need(x, rows * c, "position_embedding_forward", "x");
    Need(wpe, (pos0 + std::min(t, rows + first_row)) * c, "position_embedding_forward", "wpe");
    cuda::PositionEmbeddingForward(x.f32(), wpe.f32(), rows, c, first_row, t, pos0, s());
    Launched("position_embedding_forward");
  }
  void PositionEmbeddingBackward(TensorView dwpe, ConstView dx, int64_t rows, int64_t c,
                                 int64_t first_row, int64_t t) override {
    Need(dwpe, std::min(t, rows + first_row) * c, "position_embedding_backward", "dwpe");
    Need(dx, rows * c, "position_embedding_backward", "dx");
    cuda::PositionEmbeddingBackward(dwpe.f32(), dx.f32(), rows, c, first_row, t, s());
    Launched("position_embedding_backward");
  }
  void CrossEntropyForward(TensorView losses, ConstView logits, ConstView targets,
                           ConstView loss_mask, int64_t n, int64_t v, int64_t vp) override {
    Need(losses, n, "cross_entropy_forward", "losses");
    Need(logits, n * vp, "cross_entropy_forward", "logits");
    Need(targets, n, "cross_entropy_forward", "targets", DType::kI32);
    Opt(loss_mask, n, "cross_entropy_forward", "loss_mask");
    cuda::CrossEntropyForward(losses.f32(), nullptr, logits.f32(), targets.i32(),
                              loss_mask.f32(), n, v, vp, s());
    Launched("cross_entropy_forward");
  }
  void CrossEntropyBackward(TensorView dlogits, ConstView logits, ConstView targets,
                            ConstView loss_mask, float dloss, int64_t n, int64_t v,
                            int64_t vp) override {
    Need(dlogits, n * vp, "cross_entropy_backward", "dlogits");
    Need(logits, n * vp, "cross_entropy_backward", "logits");
    Need(targets, n, "cross_entropy_backward", "targets", DType::kI32);
    Opt(loss_mask, n, "cross_entropy_backward", "loss_mask");
    cuda::CrossEntropyBackward(dlogits.f32(), logits.f32(), targets.i32(), loss_mask.f32(),
                               dloss, n, v, vp, /*from_probs=*/false, s());
    Launched("cross_entropy_backward");
  }
  void CrossEntropyForwardProbs(TensorView losses, TensorView logits, ConstView targets,
                                ConstView loss_mask, int64_t n, int64_t v, int64_t vp) override {
    Need(losses, n, "cross_entropy_forward_probs", "losses");
    Need(logits, n * vp, "cross_entropy_forward_probs", "logits");
    Need(targets, n, "cross_entropy_forward_probs", "targets", DType::kI32);
    Opt(loss_mask, n, "cross_entropy_forward_probs", "loss_mask");
    cuda::CrossEntropyForward(losses.f32(), logits.f32(), logits.f32(), targets.i32(),
                              loss_mask.f32(), n, v, vp, s());
    Launched("cross_entropy_forward_probs");
  }
  void CrossEntropyBackwardProbs(TensorView probs, ConstView targets, ConstView loss_mask,
                                 float dloss, int64_t n, int64_t v, int64_t vp) override {
    Need(probs, n * vp, "cross_entropy_backward_probs", "probs");
    Need(targets, n, "cross_entropy_backward_probs", "targets", DType::kI32);
    Opt(loss_mask, n, "cross_entropy_backward_probs", "loss_mask");
    cuda::CrossEntropyBackward(probs.f32(), probs.f32(), targets.i32(), loss_mask.f32(), dloss,
                               n, v, vp, /*from_probs=*/true, s());
    Launched("cross_entropy_backward_probs");
  }
  void CrossEntropyShardMax(TensorView row_max, ConstView logits, int64_t n, int64_t cols,
                            int64_t col_begin, int64_t v) override {
    Need(row_max, n, "cross_entropy_shard_max", "row_max");
    Need(logits, n * cols, "cross_entropy_shard_max", "logits");
    cuda::CrossEntropyShardMax(row_max.f32(), logits.f32(), n, cols, col_begin, v, s());
    Launched("cross_entropy_shard_max");
  }
  void CrossEntropyShardStats(TensorView sum_exp, TensorView target_logit, ConstView logits,
                              ConstView targets, ConstView row_max, int64_t n, int64_t cols,
                              int64_t col_begin, int64_t v) override {
    Need(sum_exp, n, "cross_entropy_shard_stats", "sum_exp");
    Need(target_logit, n, "cross_entropy_shard_stats", "target_logit");
    Need(logits, n * cols, "cross_entropy_shard_stats", "logits");
    Need(targets, n, "cross_entropy_shard_stats", "targets", DType::kI32);
    Need(row_max, n, "cross_entropy_shard_stats", "row_max");
    cuda::CrossEntropyShardStats(sum_exp.f32(), target_logit.f32(), logits.f32(), targets.i32(),
                                 row_max.f32(), n, cols, col_begin, v, s());
    Launched("cross_entropy_shard_stats");
  }
  void CrossEntropyShardLoss(TensorView losses, ConstView row_max, ConstView sum_exp,
                             ConstView target_logit, ConstView targets, ConstView loss_mask,
                             int64_t n) override {
    Need(losses, n, "cross_entropy_shard_loss", "losses");
    Need(row_max, n, "cross_entropy_shard_loss", "row_max");
    Need(sum_exp, n, "cross_entropy_shard_loss", "sum_exp");
    Need(target_logit, n, "cross_entropy_shard_loss", "target_logit");
    Need(targets, n, "cross_entropy_shard_loss", "targets", DType::kI32);
    Opt(loss_mask, n, "cross_entropy_shard_loss", "loss_mask");
    cuda::CrossEntropyShardLoss(losses.f32(), row_max.f32(), sum_exp.f32(), target_logit.f32(),
                                targets.i32(), loss_mask.f32(), n, s());
    Launched("cross_entropy_shard_loss");
  }
  void CrossEntropyShardBackward(TensorView dlogits, ConstView logits, ConstView targets,
                                 ConstView loss_mask, ConstView row_max, ConstView sum_exp,
                                 float dloss, int64_t n, int64_t cols, int64_t col_begin,
                                 int64_t v) override {
    Need(dlogits, n * cols, "cross_entropy_shard_backward", "dlogits");
    Need(logits, n * cols, "cross_entropy_shard_backward", "logits");
    Need(targets, n, "cross_entropy_shard_backward", "targets", DType::kI32);
    Opt(loss_mask, n, "cross_entropy_shard_backward", "loss_mask");
    Need(row_max, n, "cross_entropy_shard_backward", "row_max");
    Need(sum_exp, n, "cross_entropy_shard_backward", "sum_exp");
    cuda::CrossEntropyShardBackward(dlogits.f32(), logits.f32(), targets.i32(), loss_mask.f32(),
                                    row_max.f32(), sum_exp.f32(), dloss, n, cols, col_begin, v,
                                    s());
    Launched("cross_entropy_shard_backward");
  }
  void EmbeddingShardForward(TensorView out, ConstView tokens, ConstView wte_rows,
                             int64_t row_begin, int64_t rows, int64_t n, int64_t c) override {
    Need(out, n * c, "embedding_shard_forward", "out");
    Need(tokens, n, "embedding_shard_forward", "tokens", DType::kI32);
    Need(wte_rows, rows * c, "embedding_shard_forward", "wte_rows");
    cuda::EmbeddingShardForward(out.f32(), tokens.i32(), wte_rows.f32(), row_begin, rows, n, c,
                                s());
    Launched("embedding_shard_forward");
  }
  void EmbeddingShardBackward(TensorView dwte_rows, ConstView dout, ConstView tokens,
                              int64_t row_begin, int64_t rows, int64_t n, int64_t c) override {
    Need(dwte_rows, rows * c, "embedding_shard_backward", "dwte_rows");
    Need(dout, n * c, "embedding_shard_backward", "dout");
    Need(tokens, n, "embedding_shard_backward", "tokens", DType::kI32);
    cuda::EmbeddingShardBackward(dwte_rows.f32(), dout.f32(), tokens.i32(), row_begin, rows, n,
                                 c, s());
    Launched("embedding_shard_backward");
  }
  void ResidualForward(TensorView out, ConstView a, ConstView b, int64_t n) override {
    Need(out, n, "residual_forward", "out");
    Need(a, n, "residual_forward", "a");
    Need(b, n, "residual_forward", "b");
    cuda::ResidualForward(out.f32(), a.f32(), b.f32(), n, s());
    Launched("residual_forward");
  }
  void ResidualBackward(TensorView da, TensorView db, ConstView dout, int64_t n) override {
    Opt(da, n, "residual_backward", "da");
    Opt(db, n, "residual_backward", "db");
    Need(dout, n, "residual_backward", "dout");
    cuda::ResidualBackward(da.f32(), db.f32(), dout.f32(), n, s());
    Launched("residual_backward");
  }
  void AdamWUpdate(TensorView param, ConstView grad, TensorView m, TensorView v, int64_t n,
                   const AdamWArgs& args) override {
    Need(param, n, "adamw", "param");
    Need(grad, n, "adamw", "grad");
    Need(m, n, "adamw", "m");
    Need(v, n, "adamw", "v");
    LATTICE_CHECK_MSG(args.step >= 1, "AdamW step is 1-based (bias correction divides by 1-b^t)");
    // The scalars exactly as the CPU's AdamW computes them (kernels/adamw.h).
    const cpu::AdamWConstants k = cpu::AdamWStepConstants(args);
    cuda::AdamW(param.f32(), grad.f32(), m.f32(), v.f32(), n, k, s());
    Launched("adamw");
  }
  void Scale(TensorView x, int64_t n, float scale) override {
    Need(x, n, "scale", "x");
    cuda::Scale(x.f32(), n, scale, s());
    Launched("scale");
  }
  void FillNormal(TensorView x, uint64_t seed, const std::string& stream, int64_t rows,
                  int64_t cols, int64_t stride, int64_t first_index, int64_t index_stride,
                  float std) override {
    Need(x, rows > 0 ? (rows - 1) * stride + cols : 0, "fill_normal", "x");
    if (rows <= 0 || cols <= 0) return;
    // Drawn on the host with the CPU backend's counter-based generator (set-up only), so both
    // backends initialise the same model.
    const CounterRng rng(seed, stream);
    std::vector<float> host(static_cast<size_t>(rows * cols));
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t g = first_index + r * index_stride;
      for (int64_t c = 0; c < cols; ++c) {
        host[r * cols + c] = std * rng.Normal(static_cast<uint64_t>(g + c));
      }
    }
    Api(cudaMemcpy2DAsync(x.data, static_cast<size_t>(stride) * 4, host.data(),
                          static_cast<size_t>(cols) * 4, static_cast<size_t>(cols) * 4,
                          static_cast<size_t>(rows), cudaMemcpyHostToDevice, s()),
        "fill_normal");
    stream_.Synchronize();
  }

 private:
  cudaStream_t s() const { return stream_.get(); }
  static size_t Bytes(const ConstView& v) {
    return static_cast<size_t>(v.numel) * DTypeSize(v.dtype);
  }
  void Record(const char* op, const std::string& what) {
    if (error_.ok()) error_ = absl::InternalError(absl::StrCat("CUDA backend op ", op, ": ", what));
  }
  void Api(cudaError_t e, const char* op) {
    if (e != cudaSuccess) Record(op, cudaGetErrorString(e));
  }
  void Launched(const char* op) { Api(cudaGetLastError(), op); }
  void Blas(cublasStatus_t st, const char* op) {
    if (st != CUBLAS_STATUS_SUCCESS) Record(op, absl::StrCat("cuBLAS status ", static_cast<int>(st)));
  }
  void CheckHeads(int64_t h, int64_t kvh, int64_t d, const char* op) {
    LATTICE_CHECK_MSG(kvh > 0 && h % kvh == 0,
                      absl::StrCat("backend op ", op, ": ", h, " heads are not a multiple of ", kvh,
                                   " kv heads"));
    LATTICE_CHECK_MSG(d > 0 && d <= kMaxHeadDim,
                      absl::StrCat("backend op ", op, ": head size ", d, " is outside 1..",
                                   kMaxHeadDim, " (the CUDA attention kernel's limit)"));
  }
  void Sum(DeviceScalars& sc, int slot, ConstView x, bool squares, const char* op) {
    LATTICE_CHECK(slot >= 0 && slot < sc.size());
    LATTICE_CHECK_MSG(IsFloat(x.dtype), absl::StrCat("backend op ", op, ": not a float view"));
    cuda::AccumulateSum(sc.data() + slot, x.data, FloatOf(x.dtype), x.numel, squares,
                        static_cast<double*>(partials_->data()), s());
    Launched(op);
  }
  void Backward(TensorView dinp, TensorView dweight, TensorView dbias, ConstView dout,
                ConstView inp, ConstView weight, int64_t n, int64_t c, int64_t oc,
                float dinp_beta, const char* op) {
    Opt(dinp, n * c, op, "dinp");
    Opt(dweight, oc * c, op, "dweight");
    Opt(dbias, oc, op, "dbias");
    Need(dout, n * oc, op, "dout");
    if (dweight.present()) Need(inp, n * c, op, "inp");
    if (dinp.present()) Need(weight, oc * c, op, "weight");
    const float one = 1.0f;
    if (dinp.present()) {
      // Column-major dinp^T (c, n) = weight^T (c, oc) dout^T (oc, n).
      Blas(cublasSgemm(blas_, CUBLAS_OP_N, CUBLAS_OP_N, Dim(c, op), Dim(n, op), Dim(oc, op), &one,
                       weight.f32(), Dim(c, op), dout.f32(), Dim(oc, op), &dinp_beta, dinp.f32(),
                       Dim(c, op)),
           op);
    }
    if (dweight.present()) {
      // Column-major dweight^T (c, oc) += inp^T (c, n) dout (n, oc).
      Blas(cublasSgemm(blas_, CUBLAS_OP_N, CUBLAS_OP_T, Dim(c, op), Dim(oc, op), Dim(n, op), &one,
                       inp.f32(), Dim(c, op), dout.f32(), Dim(oc, op), &one, dweight.f32(),
                       Dim(c, op)),
           op);
    }
    if (dbias.present()) {
      cuda::ColumnSum(dbias.f32(), dout.f32(), n, oc, s());
      Launched(op);
    }
  }
  void AttnBackward(TensorView dqkv, ConstView dout, ConstView qkv, ConstView out, ConstView lse,
                    int64_t b, int64_t t, int64_t h, int64_t kvh, int64_t d, bool accumulate,
                    const char* op) {
    CheckHeads(h, kvh, d, op);
    Need(dqkv, b * t * (h + 2 * kvh) * d, op, "dqkv");
    Need(dout, b * t * h * d, op, "dout");
    Need(qkv, b * t * (h + 2 * kvh) * d, op, "qkv");
    Need(out, b * t * h * d, op, "out");
    Need(lse, b * h * t, op, "lse");
    float* delta = Scratch(b * h * t);
    cuda::AttentionBackward(dqkv.f32(), dout.f32(), qkv.f32(), out.f32(), lse.f32(), delta, b, t,
                            h, kvh, d, accumulate, s());
    Launched(op);
  }
  void GeluBack(TensorView dinp, ConstView inp, ConstView dout, int64_t n, bool accumulate,
                const char* op) {
    Need(dinp, n, op, "dinp");
    Need(inp, n, op, "inp");
    Need(dout, n, op, "dout");
    cuda::GeluBackward(dinp.f32(), inp.f32(), dout.f32(), n, accumulate, s());
    Launched(op);
  }
  void RopeOp(TensorView x, int64_t b, int64_t t, int64_t heads, int64_t d, int64_t row_stride,
              int64_t pos_offset, float theta, float sign, const char* op) {
    LATTICE_CHECK_MSG(d % 2 == 0, absl::StrCat("backend op ", op, ": head size ", d, " is odd"));
    Need(x, b * t > 0 ? (b * t - 1) * row_stride + heads * d : 0, op, "x");
    cuda::Rope(x.f32(), b, t, heads, d, row_stride, pos_offset, theta, sign, s());
    Launched(op);
  }
  // Backend-owned device scratch of at least n floats; grows (one allocation) only when a larger
  // shape first comes, so a steady-state step allocates nothing.
  float* Scratch(int64_t n) {
    if (scratch_ == nullptr || static_cast<int64_t>(scratch_->bytes()) < n * 4) {
      stream_.Synchronize();  // the old buffer may still be read by enqueued work
      scratch_ = AllocateStorage(n * 4);
    }
    return static_cast<float*>(scratch_->data());
  }

  int device_;
  CudaStream stream_;
  cublasHandle_t blas_;
  bool tf32_;
  int threads_ = 1;
  int64_t allocations_ = 0;
  std::shared_ptr<Storage> partials_, scratch_;
  absl::Status error_;
};

}  // namespace

bool Built() { return true; }

int DeviceCount(std::string* why) {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    if (why != nullptr) *why = absl::StrCat("the CUDA runtime found no GPU: ", cudaGetErrorString(e));
    cudaGetLastError();  // clear it
    return 0;
  }
  if (n == 0 && why != nullptr) *why = "the CUDA runtime sees no GPU";
  return n;
}

absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(int device) {
  std::string why;
  const int n = DeviceCount(&why);
  if (n == 0) return absl::FailedPreconditionError(why);
  if (device < 0 || device >= n) {
    return absl::InvalidArgumentError(
        absl::StrCat("GPU ", device, " does not exist: the CUDA runtime sees ", n));
  }
  cudaError_t e = cudaSetDevice(device);
  if (e != cudaSuccess) {
    return absl::InternalError(absl::StrCat("cudaSetDevice(", device, "): ", cudaGetErrorString(e)));
  }
  cudaStream_t stream;
  e = cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking);
  if (e != cudaSuccess) {
    return absl::InternalError(absl::StrCat("cudaStreamCreate: ", cudaGetErrorString(e)));
  }
  cublasHandle_t blas;
  if (cublasCreate(&blas) != CUBLAS_STATUS_SUCCESS) {
    cudaStreamDestroy(stream);
    return absl::InternalError("cublasCreate failed");
  }
  cublasSetStream(blas, stream);
  // fp32 GEMMs are plain fp32 unless LATTICE_TF32=1 lets cuBLAS use TF32 tensor cores (about
  // 3e-4 relative error instead of fp32's ~1e-6; docs/precision.md).
  const char* tf32_env = std::getenv("LATTICE_TF32");
  const bool tf32 = tf32_env != nullptr && std::string(tf32_env) == "1";
  cublasSetMathMode(blas, tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH);
  return std::unique_ptr<Backend>(new CudaBackend(device, stream, blas, tf32));
}

absl::Status BackendError(const Backend& backend) {
  const auto* cuda = dynamic_cast<const CudaBackend*>(&backend);
  return cuda == nullptr ? absl::OkStatus() : cuda->error();
}

#endif  // LATTICE_HAVE_CUDA

}  // namespace lattice::kernels::cuda
