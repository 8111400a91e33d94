// `lattice bench --sweep ranks=1,2,4 [--weak|--strong] --config F [--out-dir D]`: one
// `lattice bench --config F` run per rank count (mpirun for more than one rank), each run's
// JSON collected into D/sweep.json, a Markdown table D/sweep.md and a plot D/sweep.png of
// throughput and efficiency against ranks, drawn by gnuplot from D/sweep.gp and D/sweep.dat.
//
// The ranks are data-parallel: dp = ranks / (tp * pp) of the config. Strong scaling keeps the
// config's global batch; weak scaling multiplies it by ranks / (the first rank count). Each run
// sizes its threads as `lattice train` does (cores / ranks on the node, at least 1), so on a
// machine with fewer cores than ranks the extra ranks share cores (oversubscribed).
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "launcher/bench_modes.h"
#include "launcher/commands.h"
#include "nlohmann/json.hpp"
#include "runtime/config.h"
#include "runtime/status.h"

namespace lattice {

namespace {

// Rank counts this sweep accepts: beyond this, one machine's mpirun is not what a sweep means.
constexpr int kMaxSweepRanks = 1024;

absl::StatusOr<std::vector<int>> ParseRanks(const std::string& spec) {
  const std::string prefix = "ranks=";
  if (spec.rfind(prefix, 0) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--sweep '", spec, "': expected ranks=N,N,... (e.g. ranks=1,2,4)"));
  }
  std::vector<int> ranks;
  for (absl::string_view part : absl::StrSplit(spec.substr(prefix.size()), ',')) {
    int n = 0;
    if (!absl::SimpleAtoi(part, &n) || n < 1 || n > kMaxSweepRanks) {
      return absl::InvalidArgumentError(absl::StrCat("--sweep '", spec, "': '", part,
                                                     "' is not a rank count in [1, ",
                                                     kMaxSweepRanks, "]"));
    }
    if (!ranks.empty() && n <= ranks.back()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--sweep '", spec, "': rank counts must increase"));
    }
    ranks.push_back(n);
  }
  return ranks;
}

// gnuplot data/strings: no quotes or newlines in what goes into the script.
std::string GnuplotQuote(const std::string& s) {
  std::string out;
  for (char ch : s) {
    if (ch == '\'' || ch == '\n' || ch == '\\') continue;
    out += ch;
  }
  return "'" + out + "'";
}

}  // namespace

absl::Status RunBenchSweep(const BenchOptions& o) {
  LATTICE_ASSIGN_OR_RETURN(std::vector<int> ranks, ParseRanks(o.sweep));
  LATTICE_ASSIGN_OR_RETURN(Config cfg, LoadConfig(o.config, o.sets));
  const int64_t model_parallel = cfg.parallel.tp * cfg.parallel.pp;
  const int64_t base_batch = cfg.train.global_batch_size > 0
                                 ? cfg.train.global_batch_size
                                 : cfg.train.micro_batch_size * ranks[0] / model_parallel;
  std::error_code ec;
  std::filesystem::create_directories(o.out_dir, ec);
  if (ec) {
    return absl::FailedPreconditionError(
        absl::StrCat("--out-dir '", o.out_dir, "': cannot create: ", ec.message()));
  }
  LATTICE_ASSIGN_OR_RETURN(const std::string self, SelfExecutable());
  const char* mpirun_env = std::getenv("MPIRUN");
  const std::string mpirun = mpirun_env != nullptr && *mpirun_env ? mpirun_env : "mpirun";
  const int cores = static_cast<int>(std::thread::hardware_concurrency());
  const std::string mode = o.weak ? "weak" : "strong";

  nlohmann::ordered_json runs = nlohmann::ordered_json::array();
  for (int n : ranks) {
    if (n % model_parallel != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--sweep: ", n, " ranks do not divide into parallel.tp*parallel.pp=", model_parallel));
    }
    const int64_t dp = n / model_parallel;
    const int64_t batch = o.weak ? base_batch * n / ranks[0] : base_batch;
    // The micro-batch: the config's, or the largest that divides this rank count's share.
    int64_t mbs = cfg.train.micro_batch_size;
    if (batch % dp != 0) {
      return absl::InvalidArgumentError(absl::StrCat("--sweep (", mode, "): global batch ", batch,
                                                     " does not split over dp=", dp));
    }
    mbs = std::gcd(mbs, batch / dp);
    const std::string json = (std::filesystem::path(o.out_dir) / absl::StrCat("run-ranks", n, ".json")).string();
    const std::string log = (std::filesystem::path(o.out_dir) / absl::StrCat("run-ranks", n, ".log")).string();
    std::vector<std::string> argv;
    if (n > 1) argv = {mpirun, "-np", std::to_string(n), "--bind-to", "none"};
    argv.insert(argv.end(), {self, "bench", "--config", o.config});
    for (const std::string& s : o.sets) argv.insert(argv.end(), {"--set", s});
    argv.insert(argv.end(), {"--set", absl::StrCat("parallel.dp=", dp), "--set",
                             absl::StrCat("train.global_batch_size=", batch), "--set",
                             absl::StrCat("train.micro_batch_size=", mbs), "--warmup",
                             std::to_string(o.warmup), "--steps", std::to_string(o.steps),
                             "--json", json});
    if (!o.cluster.empty()) argv.insert(argv.end(), {"--cluster", o.cluster});
    std::printf("lattice bench --sweep: %s\n", absl::StrJoin(argv, " ").c_str());
    std::fflush(stdout);
    LATTICE_ASSIGN_OR_RETURN(int rc, RunChild(argv, n > 1 ? MpiChildEnv() : std::vector<std::string>{}, log));
    if (rc != 0) {
      absl::StatusOr<std::string> text = ReadWholeFile(log);
      return absl::InternalError(absl::StrCat("--sweep: the ", n, "-rank run exited ", rc,
                                              "; its output (", log, "):\n",
                                              text.ok() ? *text : "(unreadable)"));
    }
    LATTICE_ASSIGN_OR_RETURN(std::string text, ReadWholeFile(json));
    nlohmann::ordered_json j = nlohmann::ordered_json::parse(text, nullptr, false);
    if (j.is_discarded() || !j.contains("tokens_per_s")) {
      return absl::InternalError(absl::StrCat("--sweep: ", json, " is not a bench result"));
    }
    runs.push_back({{"ranks", n}, {"json", json}, {"result", j}});
  }

  // Speed-up and efficiency against the first rank count.
  const nlohmann::ordered_json& first = runs[0]["result"];
  const double tps0 = first["tokens_per_s"].get<double>();
  const int threads0 = first["threads_per_rank"].get<int>();
  const int cores0 = std::min(ranks[0] * threads0, cores);
  nlohmann::ordered_json rows = nlohmann::ordered_json::array();
  std::string md = absl::StrFormat(
      "| ranks | threads/rank | cores used | global batch | step ms median [p10, p90] | tokens/s | "
      "tokens/s/rank | speed-up | efficiency per rank | efficiency per core | MFU |\n"
      "|---|---|---|---|---|---|---|---|---|---|---|\n");
  std::string dat = "# ranks tokens_per_s efficiency_per_rank efficiency_per_core\n";
  for (const auto& run : runs) {
    const nlohmann::ordered_json& r = run["result"];
    const int n = run["ranks"].get<int>();
    const int threads = r["threads_per_rank"].get<int>();
    const int used = std::min(n * threads, cores);
    const double tps = r["tokens_per_s"].get<double>();
    // Strong: the same work done faster; weak: more work in the same time. Either way the
    // throughput ratio, over the ratio of ranks (or of cores really used) is the efficiency.
    const double speedup = tps / tps0;
    const double eff_rank = speedup * ranks[0] / n;
    const double eff_core = speedup * cores0 / used;
    const std::string mfu = r["mfu"].is_number()
                                ? absl::StrFormat("%.1f%%", 100 * r["mfu"].get<double>())
                                : "unknown";
    absl::StrAppendFormat(&md, "| %d | %d | %d | %d | %.1f [%.1f, %.1f] | %.0f | %.0f | %.2f | %.2f | %.2f | %s |\n",
                          n, threads, used, r["global_batch"].get<int64_t>(),
                          r["step_ms"]["median"].get<double>(), r["step_ms"]["p10"].get<double>(),
                          r["step_ms"]["p90"].get<double>(), tps,
                          r["tokens_per_s_per_rank"].get<double>(), speedup, eff_rank, eff_core,
                          mfu);
    absl::StrAppendFormat(&dat, "%d %.6g %.6g %.6g\n", n, tps, eff_rank, eff_core);
    rows.push_back({{"ranks", n},
                    {"threads_per_rank", threads},
                    {"cores_used", used},
                    {"global_batch", r["global_batch"]},
                    {"step_ms_median", r["step_ms"]["median"]},
                    {"step_ms_p10", r["step_ms"]["p10"]},
                    {"step_ms_p90", r["step_ms"]["p90"]},
                    {"tokens_per_s", tps},
                    {"tokens_per_s_per_rank", r["tokens_per_s_per_rank"]},
                    {"speedup", speedup},
                    {"efficiency_per_rank", eff_rank},
                    {"efficiency_per_core", eff_core},
                    {"mfu", r["mfu"]},
                    {"json", run["json"]}});
  }
  absl::StrAppendFormat(
      &md,
      "\n%s scaling of %s on %d cores (%s). Speed-up: tokens/s over the %d-rank run's. "
      "Efficiency per rank: speed-up x %d / ranks; per core: speed-up x %d / cores used "
      "(min(ranks x threads, cores)), what this machine can give.\n",
      o.weak ? "Weak" : "Strong", o.config, cores,
      o.weak ? "global batch grows with the ranks" : "global batch fixed", ranks[0], ranks[0],
      cores0);

  nlohmann::ordered_json out;
  out["sweep"] = mode;
  out["config"] = o.config;
  out["cores"] = cores;
  out["ranks"] = ranks;
  out["definitions"] = {
      {"speedup", "tokens_per_s / tokens_per_s of the first rank count"},
      {"efficiency_per_rank", "speedup * first ranks / ranks"},
      {"efficiency_per_core", "speedup * first cores used / cores used; cores used = "
                              "min(ranks * threads_per_rank, cores)"}};
  out["rows"] = rows;
  const std::filesystem::path dir(o.out_dir);
  LATTICE_RETURN_IF_ERROR(WriteOutput((dir / "sweep.json").string(), out.dump(1) + "\n"));
  LATTICE_RETURN_IF_ERROR(WriteOutput((dir / "sweep.md").string(), md));
  LATTICE_RETURN_IF_ERROR(WriteOutput((dir / "sweep.dat").string(), dat));

  // gnuplot writes its PNG to a temporary name in the same folder; the bytes are then written
  // to sweep.png through OutputFile (an existing file is replaced whole, never in part).
  const std::string png_tmp =
      (dir / absl::StrCat(".sweep.png.gnuplot.", getpid())).string();
  const std::string title = absl::StrFormat("lattice %s scaling: %s, %d cores", mode,
                                            std::filesystem::path(o.config).filename().string(),
                                            cores);
  std::string xtics;
  for (int n : ranks) absl::StrAppend(&xtics, xtics.empty() ? "" : ", ", n);
  const std::string gp = absl::StrCat(
      "# Drawn by `lattice bench --sweep` (launcher/bench_sweep.cc) from sweep.dat.\n",
      "set terminal pngcairo size 900,540 noenhanced font 'sans,11'\n",
      "set output ", GnuplotQuote(png_tmp), "\n",
      "set title ", GnuplotQuote(title), "\n",
      "set xlabel 'ranks'\n",
      "set logscale x 2\n",
      "set xtics (", xtics, ")\n",
      "set xrange [", ranks.front() / 1.3, ":", ranks.back() * 1.3, "]\n",
      "set ylabel 'tokens/s'\n",
      "set yrange [0:*]\n",
      "set y2label 'efficiency'\n",
      "set y2range [0:*]\n",
      "set y2tics 0.2\n",
      "set ytics nomirror\n",
      "set grid\n",
      "set key bottom left\n",
      "plot ", GnuplotQuote((dir / "sweep.dat").string()),
      " using 1:2 axes x1y1 with linespoints lw 2 pt 7 title 'tokens/s', \\\n",
      "     '' using 1:3 axes x1y2 with linespoints lw 2 pt 5 dt 2 title 'efficiency per rank', \\\n",
      "     '' using 1:4 axes x1y2 with linespoints lw 2 pt 9 dt 3 title 'efficiency per core'\n");
  const std::string gp_path = (dir / "sweep.gp").string();
  LATTICE_RETURN_IF_ERROR(WriteOutput(gp_path, gp));
  const char* gnuplot_env = std::getenv("GNUPLOT");
  const std::string gnuplot = gnuplot_env != nullptr && *gnuplot_env ? gnuplot_env : "gnuplot";
  const std::string gp_log = (dir / "gnuplot.log").string();
  absl::StatusOr<int> rc = RunChild({gnuplot, gp_path}, {}, gp_log);
  std::error_code rm_ec;
  if (!rc.ok() || *rc != 0) {
    std::filesystem::remove(png_tmp, rm_ec);
    absl::StatusOr<std::string> text = ReadWholeFile(gp_log);
    return absl::FailedPreconditionError(absl::StrCat(
        "--sweep: gnuplot (Debian package gnuplot-nox; GNUPLOT names another) failed on ",
        gp_path, rc.ok() ? absl::StrCat(": exit ", *rc) : absl::StrCat(": ", rc.status().message()),
        text.ok() ? absl::StrCat("\n", *text) : ""));
  }
  absl::StatusOr<std::string> png = ReadWholeFile(png_tmp);
  std::filesystem::remove(png_tmp, rm_ec);
  if (!png.ok() || png->empty()) {
    return absl::InternalError(absl::StrCat("--sweep: gnuplot wrote no PNG (", png_tmp, ")"));
  }
  LATTICE_RETURN_IF_ERROR(WriteOutput((dir / "sweep.png").string(), *png));
  std::printf("\n%s\nwrote %s/{sweep.json, sweep.md, sweep.dat, sweep.gp, sweep.png}\n", md.c_str(),
              o.out_dir.c_str());
  return absl::OkStatus();
}

}  // namespace lattice
