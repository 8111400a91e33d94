// Helpers of `lattice bench`'s modes (launcher/bench_modes.h): memory, child processes, files.
#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "launcher/bench_modes.h"
#include "runtime/io/output_file.h"
#include "runtime/status.h"

extern char** environ;

namespace lattice {

absl::StatusOr<std::string> SelfExecutable() {
  std::vector<char> buf(4096);
  const ssize_t n = readlink("/proc/self/exe", buf.data(), buf.size() - 1);
  if (n <= 0) {
    return absl::InternalError(
        absl::StrCat("lattice bench: cannot read /proc/self/exe: ", std::strerror(errno)));
  }
  return std::string(buf.data(), static_cast<size_t>(n));
}

std::vector<std::string> MpiChildEnv() {
  // The same variables the repo's multi-rank tests set (tests/launcher/parallel_train_test.py):
  // more ranks than cores on small machines, and Open MPI's CMA single copy, which containers
  // forbid (ptrace scope), off.
  std::vector<std::string> env = {"OMPI_MCA_rmaps_base_oversubscribe=1",
                                  "OMPI_MCA_btl_vader_single_copy_mechanism=none"};
  if (geteuid() == 0) {
    env.push_back("OMPI_ALLOW_RUN_AS_ROOT=1");
    env.push_back("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1");
  }
  return env;
}

absl::StatusOr<int> RunChild(const std::vector<std::string>& argv,
                             const std::vector<std::string>& env, const std::string& log_path) {
  if (argv.empty()) return absl::InvalidArgumentError("lattice bench: empty command");
  // This process's environment, with `env`'s variables replacing those of the same name.
  std::map<std::string, std::string> vars;
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string kv(*e);
    vars[kv.substr(0, kv.find('='))] = kv;
  }
  for (const std::string& kv : env) vars[kv.substr(0, kv.find('='))] = kv;
  std::vector<std::string> env_strings;
  for (const auto& [k, kv] : vars) env_strings.push_back(kv);
  std::vector<char*> envp, args;
  for (std::string& s : env_strings) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::vector<std::string> argv_copy = argv;
  for (std::string& s : argv_copy) args.push_back(s.data());
  args.push_back(nullptr);

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, log_path.c_str(),
                                   O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
  pid_t pid = 0;
  const int rc = posix_spawnp(&pid, args[0], &actions, nullptr, args.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) {
    return absl::FailedPreconditionError(absl::StrCat("lattice bench: cannot start '", argv[0],
                                                      "': ", std::strerror(rc)));
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) {
      return absl::InternalError(absl::StrCat("lattice bench: waitpid: ", std::strerror(errno)));
    }
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  return 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
}

absl::Status WriteOutput(const std::string& path, const std::string& bytes) {
  LATTICE_ASSIGN_OR_RETURN(std::unique_ptr<OutputFile> f, OutputFile::Create(path));
  LATTICE_RETURN_IF_ERROR(f->Write(bytes));
  return f->Commit();
}

absl::StatusOr<std::string> ReadWholeFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("lattice bench: cannot read '", path, "'"));
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

}  // namespace lattice
