#include "parallel/loss_scaler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "absl/strings/str_cat.h"
#include "runtime/io/json_limits.h"
#include "runtime/status.h"

namespace lattice {
namespace {

constexpr double kFloatMax = std::numeric_limits<float>::max();

absl::Status Invalid(absl::string_view field, double value, absl::string_view rule) {
  return absl::InvalidArgumentError(
      absl::StrCat("loss scaler: ", field, " = ", value, " ", rule));
}

}  // namespace

absl::Status LossScalerConfig::Validate() const {
  // The scales are fp32 values (as Megatron's); NaN fails every comparison below.
  if (!(initial_scale > 0.0 && initial_scale <= kFloatMax)) {
    return Invalid("initial_scale", initial_scale, "must be positive and finite in fp32");
  }
  if (!(min_scale > 0.0 && min_scale <= initial_scale)) {
    return Invalid("min_scale", min_scale,
                   absl::StrCat("must be positive and at most initial_scale (", initial_scale,
                                ")"));
  }
  if (!(growth_factor > 1.0 && growth_factor <= kFloatMax)) {
    return Invalid("growth_factor", growth_factor, "must be greater than 1 and finite");
  }
  if (!(backoff_factor > 0.0 && backoff_factor < 1.0)) {
    return Invalid("backoff_factor", backoff_factor, "must be in (0, 1)");
  }
  if (growth_interval <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "loss scaler: growth_interval = ", growth_interval, " must be at least 1 step"));
  }
  if (hysteresis <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("loss scaler: hysteresis = ", hysteresis, " must be at least 1"));
  }
  // fp32 rounding can move a factor onto 1 (growth 1 + 1e-9) or a scale onto 0 (min_scale
  // 1e-50): the rules above must hold for the fp32 values the scaler computes with.
  if (!(static_cast<float>(growth_factor) > 1.0f)) {
    return Invalid("growth_factor", growth_factor, "rounds to 1 in fp32");
  }
  if (!(static_cast<float>(backoff_factor) < 1.0f && static_cast<float>(backoff_factor) > 0.0f)) {
    return Invalid("backoff_factor", backoff_factor, "rounds to 0 or 1 in fp32");
  }
  if (!(static_cast<float>(min_scale) > 0.0f)) {
    return Invalid("min_scale", min_scale, "rounds to 0 in fp32");
  }
  return absl::OkStatus();
}

absl::StatusOr<DynamicLossScaler> DynamicLossScaler::Create(const LossScalerConfig& config) {
  LATTICE_RETURN_IF_ERROR(config.Validate());
  return DynamicLossScaler(config);
}

DynamicLossScaler::DynamicLossScaler(const LossScalerConfig& config)
    : config_(config),
      min_scale_(static_cast<float>(config.min_scale)),
      growth_factor_(static_cast<float>(config.growth_factor)),
      backoff_factor_(static_cast<float>(config.backoff_factor)),
      scale_(static_cast<float>(config.initial_scale)),
      hysteresis_tracker_(config.hysteresis) {}

float DynamicLossScaler::inv_scale() const {
  return static_cast<float>(1.0 / static_cast<double>(scale_));
}

bool DynamicLossScaler::Update(bool found_inf) {
  if (found_inf) {
    growth_tracker_ = 0;
    hysteresis_tracker_ = std::max<int64_t>(hysteresis_tracker_ - 1, 0);
    if (hysteresis_tracker_ <= 0) scale_ = std::max(scale_ * backoff_factor_, min_scale_);
    return true;
  }
  ++growth_tracker_;
  if (growth_tracker_ >= config_.growth_interval) {
    growth_tracker_ = 0;
    hysteresis_tracker_ = config_.hysteresis;
    const float grown = scale_ * growth_factor_;
    if (std::isfinite(grown)) scale_ = grown;
  }
  return false;
}

nlohmann::json DynamicLossScaler::StateJson() const {
  nlohmann::json j = nlohmann::json::object();
  j["version"] = kStateVersion;
  j["scale"] = static_cast<double>(scale_);
  j["growth_tracker"] = growth_tracker_;
  j["hysteresis_tracker"] = hysteresis_tracker_;
  return j;
}

absl::Status DynamicLossScaler::LoadStateJson(const nlohmann::json& state) {
  if (!state.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat("loss scaler state: not a JSON object but ", JsonSnippet(state, 60)));
  }
  auto find = [&state](const char* key) -> absl::StatusOr<const nlohmann::json*> {
    auto it = state.find(key);
    if (it == state.end()) {
      return absl::InvalidArgumentError(absl::StrCat("loss scaler state: missing \"", key, "\""));
    }
    return &*it;
  };
  // A non-negative integer that fits int64 (a larger unsigned value would wrap when read).
  auto count = [&find](const char* key) -> absl::StatusOr<int64_t> {
    LATTICE_ASSIGN_OR_RETURN(const nlohmann::json* v, find(key));
    const bool fits = v->is_number_unsigned()
                          ? v->get<uint64_t>() <=
                                static_cast<uint64_t>(std::numeric_limits<int64_t>::max())
                          : v->is_number_integer() && v->get<int64_t>() >= 0;
    if (!fits) {
      return absl::InvalidArgumentError(absl::StrCat("loss scaler state: \"", key,
                                                     "\" must be an integer >= 0, got ",
                                                     JsonSnippet(*v)));
    }
    return v->get<int64_t>();
  };
  LATTICE_ASSIGN_OR_RETURN(const nlohmann::json* version, find("version"));
  if (!version->is_number_integer() || version->get<int64_t>() != kStateVersion) {
    return absl::InvalidArgumentError(absl::StrCat("loss scaler state: version ",
                                                   JsonSnippet(*version), " (this build reads ",
                                                   kStateVersion, ")"));
  }
  LATTICE_ASSIGN_OR_RETURN(const nlohmann::json* scale, find("scale"));
  const double s = scale->is_number() ? scale->get<double>() : 0.0;
  if (!(s > 0.0 && s <= kFloatMax)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "loss scaler state: \"scale\" must be a positive finite fp32 value, got ",
        JsonSnippet(*scale)));
  }
  LATTICE_ASSIGN_OR_RETURN(const int64_t growth, count("growth_tracker"));
  LATTICE_ASSIGN_OR_RETURN(const int64_t hysteresis, count("hysteresis_tracker"));
  scale_ = static_cast<float>(s);
  growth_tracker_ = growth;
  hysteresis_tracker_ = hysteresis;
  return absl::OkStatus();
}

}  // namespace lattice
