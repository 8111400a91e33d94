#include "runtime/io/output_file.h"

#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "runtime/data/token_file.h"
#include "runtime/io/safetensors.h"

namespace lattice {
namespace {

using ::testing::HasSubstr;
namespace fs = std::filesystem;

// A folder of this process's own (ctest runs tests in parallel), removed when the tests end.
const std::string& TempFolder() {
  static const std::string* const dir = [] {
    auto* d = new std::string(
        absl::StrCat(::testing::TempDir(), "/lattice_output_file_test_", ::getpid()));
    fs::create_directories(*d);
    return d;
  }();
  return *dir;
}

class RemoveTempFolder : public ::testing::Environment {
 public:
  void TearDown() override {
    std::error_code ec;
    fs::permissions(TempFolder(), fs::perms::owner_all, fs::perm_options::add, ec);
    fs::remove_all(TempFolder(), ec);
  }
};
const auto* const kRemoveTempFolder = ::testing::AddGlobalTestEnvironment(new RemoveTempFolder);

// A fresh, empty folder per test, so that "no file was left behind" can list it.
std::string FreshDir(const std::string& name) {
  const std::string d = absl::StrCat(TempFolder(), "/", name);
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

std::string ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void WriteBytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
}

std::vector<std::string> Listing(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

mode_t LstatMode(const std::string& path) {
  struct stat st;
  EXPECT_EQ(::lstat(path.c_str(), &st), 0) << path;
  return st.st_mode;
}

// Clears the test seam whatever the test does.
struct HookGuard {
  explicit HookGuard(output_file_internal::TemporaryNameHook hook) {
    output_file_internal::SetTemporaryNameHookForTesting(std::move(hook));
  }
  ~HookGuard() { output_file_internal::SetTemporaryNameHookForTesting(nullptr); }
};

// ---- Regular files -----------------------------------------------------------------------

TEST(OutputFile, CreatesNewFileWithMode0644LessUmask) {
  const std::string dir = FreshDir("new");
  const mode_t old = ::umask(027);
  const absl::Status s = WriteOutputFile(dir + "/out.txt", "hello");
  ::umask(old);
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(ReadBytes(dir + "/out.txt"), "hello");
  EXPECT_EQ(LstatMode(dir + "/out.txt") & 0777, 0640u);
  EXPECT_THAT(Listing(dir), ::testing::ElementsAre("out.txt"));  // no temporary left
}

TEST(OutputFile, ReplacesRegularFileAndKeepsItsMode) {
  const std::string dir = FreshDir("replace");
  const std::string path = dir + "/w.bin";
  WriteBytes(path, "old contents");
  ASSERT_EQ(::chmod(path.c_str(), 0600), 0);
  ASSERT_TRUE(WriteOutputFile(path, "new").ok());
  EXPECT_EQ(ReadBytes(path), "new");
  EXPECT_EQ(LstatMode(path) & 0777, 0600u);
  EXPECT_THAT(Listing(dir), ::testing::ElementsAre("w.bin"));
}

TEST(OutputFile, NothingIsVisibleBeforeCommitAndDroppingKeepsTheOldFile) {
  const std::string dir = FreshDir("drop");
  const std::string path = dir + "/w.bin";
  WriteBytes(path, "old");
  {
    auto f = OutputFile::Create(path);
    ASSERT_TRUE(f.ok()) << f.status();
    ASSERT_FALSE((*f)->in_place());
    ASSERT_TRUE((*f)->Write("half of the new").ok());
    EXPECT_EQ(ReadBytes(path), "old");
    EXPECT_TRUE(fs::exists((*f)->temp_path()));
    EXPECT_EQ(fs::path((*f)->temp_path()).parent_path(), fs::path(path).parent_path());
  }  // dropped without Commit: a failure anywhere in a writer
  EXPECT_EQ(ReadBytes(path), "old");
  EXPECT_THAT(Listing(dir), ::testing::ElementsAre("w.bin"));
}

// Injected failure: RLIMIT_FSIZE makes write(2) fail with EFBIG once the temporary passes the
// limit (SIGXFSZ ignored), exactly as a full disk fails a write midway.
class FileSizeLimit {
 public:
  explicit FileSizeLimit(rlim_t bytes) {
    old_handler_ = std::signal(SIGXFSZ, SIG_IGN);
    ::getrlimit(RLIMIT_FSIZE, &old_);
    rlimit lim = old_;
    lim.rlim_cur = bytes;
    EXPECT_EQ(::setrlimit(RLIMIT_FSIZE, &lim), 0);
  }
  ~FileSizeLimit() {
    ::setrlimit(RLIMIT_FSIZE, &old_);
    std::signal(SIGXFSZ, old_handler_);
  }

 private:
  rlimit old_;
  void (*old_handler_)(int);
};

TEST(OutputFile, WriteFailingMidwayLeavesTheOldFileIntact) {
  const std::string dir = FreshDir("midway");
  const std::string path = dir + "/w.bin";
  WriteBytes(path, "the old weights");
  const std::string big(1 << 20, 'x');
  absl::Status s;
  {
    FileSizeLimit limit(64 << 10);
    s = WriteOutputFile(path, big);
  }
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_THAT(s.message(), HasSubstr(path));
  EXPECT_THAT(s.message(), HasSubstr("is unchanged"));
  EXPECT_EQ(ReadBytes(path), "the old weights");
  EXPECT_THAT(Listing(dir), ::testing::ElementsAre("w.bin"));
}

TEST(OutputFile, SafetensorsWriteFailingMidwayLeavesTheOldFileReadable) {
  const std::string dir = FreshDir("midway_st");
  const std::string path = dir + "/model.safetensors";
  Tensor small = Tensor::Zeros({4}, DType::kF32);
  small.f32()[0] = 42;
  ASSERT_TRUE(WriteSafetensors(path, {{"w", small}}).ok());
  Tensor big = Tensor::Zeros({1 << 18}, DType::kF32);  // 1 MiB, past the 64 KiB limit
  absl::Status s;
  {
    FileSizeLimit limit(64 << 10);
    s = WriteSafetensors(path, {{"w", big}});
  }
  EXPECT_FALSE(s.ok());
  EXPECT_THAT(s.message(), HasSubstr(path));
  auto f = SafetensorsFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status();
  auto w = (*f)->Read("w");
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(w->numel(), 4);
  EXPECT_EQ(w->f32()[0], 42.0f);
  EXPECT_THAT(Listing(dir), ::testing::ElementsAre("model.safetensors"));
}

TEST(OutputFile, TokenWriterDroppedMidwayLeavesTheOldDatasetIntact) {
  const std::string dir = FreshDir("tokens");
  const std::string prefix = dir + "/d";
  MegatronDatasetWriter::Options o;
  o.vocab_size = 300;
  {
    auto w = MegatronDatasetWriter::Create(prefix, o);
    ASSERT_TRUE(w.ok()) << w.status();
    const std::vector<int32_t> doc = {1, 2, 3};
    ASSERT_TRUE((*w)->AddDocument(doc).ok());
    ASSERT_TRUE((*w)->Finalize().ok());
  }
  const std::string bin = ReadBytes(prefix + ".bin"), idx = ReadBytes(prefix + ".idx");
  {
    auto w = MegatronDatasetWriter::Create(prefix, o);
    ASSERT_TRUE(w.ok()) << w.status();
    const std::vector<int32_t> doc = {7, 8, 9, 10};
    ASSERT_TRUE((*w)->AddDocument(doc).ok());
  }  // never finalized (an error or a crash of `lattice prepare`)
  EXPECT_EQ(ReadBytes(prefix + ".bin"), bin);
  EXPECT_EQ(ReadBytes(prefix + ".idx"), idx);
  EXPECT_THAT(Listing(dir), ::testing::ElementsAre("d.bin", "d.idx"));
}

// ---- Temporary names ---------------------------------------------------------------------

TEST(OutputFile, TemporaryNamesHoldPidCounterAndNonceAndFitNameMax) {
  const std::string a = output_file_internal::TemporaryName("dir/w.st", 123, 4, 0xabcdef);
  EXPECT_EQ(a, "dir/w.st.tmp.123.4.0000000000abcdef");
  EXPECT_NE(a, output_file_internal::TemporaryName("dir/w.st", 123, 4, 0xabcdee));
  EXPECT_NE(a, output_file_internal::TemporaryName("dir/w.st", 123, 5, 0xabcdef));
  const std::string long_name(255, 'n');
  const std::string t = output_file_internal::TemporaryName("d/" + long_name, 4194304,
                                                            UINT64_MAX, UINT64_MAX);
  EXPECT_LE(fs::path(t).filename().string().size(), 255u);
  EXPECT_EQ(fs::path(t).parent_path(), "d");
}

// Links planted at the names earlier lattice versions used (PATH.tmp.PID, PATH.tmp.PID.N,
// PREFIX.bin.tmp.PID): none of them is followed, and none is removed (they are not ours).
TEST(OutputFile, LinksPlantedAtPredictableTemporaryNamesAreNotFollowed) {
  const std::string dir = FreshDir("planted_old");
  const std::string victim = dir + "/victim";
  WriteBytes(victim, "precious");
  const std::string path = dir + "/w.safetensors";
  const std::string prefix = dir + "/data";
  std::vector<std::string> planted = {absl::StrCat(path, ".tmp.", ::getpid()),
                                      absl::StrCat(prefix, ".bin.tmp.", ::getpid()),
                                      absl::StrCat(prefix, ".idx.tmp.", ::getpid())};
  for (int n = 0; n < 64; ++n) planted.push_back(absl::StrCat(path, ".tmp.", ::getpid(), ".", n));
  for (const std::string& p : planted) ASSERT_EQ(::symlink(victim.c_str(), p.c_str()), 0) << p;

  Tensor t = Tensor::Zeros({2}, DType::kF32);
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(WriteSafetensors(path, {{"w", t}}).ok());
  ASSERT_TRUE(WriteOutputFile(path, "plain").ok());
  MegatronDatasetWriter::Options o;
  o.vocab_size = 300;
  auto w = MegatronDatasetWriter::Create(prefix, o);
  ASSERT_TRUE(w.ok()) << w.status();
  ASSERT_TRUE((*w)->AddDocument(std::vector<int32_t>{5, 6}).ok());
  ASSERT_TRUE((*w)->Finalize().ok());

  EXPECT_EQ(ReadBytes(victim), "precious");
  EXPECT_EQ(ReadBytes(path), "plain");
  for (const std::string& p : planted) EXPECT_TRUE(S_ISLNK(LstatMode(p))) << p;
}

// The seam makes lattice open exactly the names planted: a link to a victim, a dangling link
// (following it would create a file where it points), a regular file and a FIFO. Each is
// skipped and the write goes to a fresh name.
TEST(OutputFile, LinksPlantedAtTheExactTemporaryNameAreNotFollowed) {
  const std::string dir = FreshDir("planted_exact");
  const std::string victim = dir + "/victim";
  WriteBytes(victim, "precious");
  const std::string path = dir + "/out.json";
  const std::vector<std::string> names = {dir + "/p0", dir + "/p1", dir + "/p2", dir + "/p3"};
  ASSERT_EQ(::symlink(victim.c_str(), names[0].c_str()), 0);
  ASSERT_EQ(::symlink((dir + "/created_by_link").c_str(), names[1].c_str()), 0);
  WriteBytes(names[2], "someone's file");
  ASSERT_EQ(::mkfifo(names[3].c_str(), 0644), 0);
  for (const char* what : {"file", "probe", "stream"}) {
    std::vector<int> attempts;
    HookGuard hook([&](const std::string& p, int attempt) -> std::string {
      attempts.push_back(attempt);
      return attempt < 4 ? names[attempt] : std::string();
    });
    if (what == std::string("file")) {
      ASSERT_TRUE(WriteOutputFile(path, "{}").ok());
      EXPECT_EQ(ReadBytes(path), "{}");
      EXPECT_EQ(attempts, (std::vector<int>{0, 1, 2, 3, 4}));
    } else if (what == std::string("probe")) {
      ASSERT_TRUE(CheckOutputWritable(path).ok());
      EXPECT_EQ(attempts, (std::vector<int>{0, 1, 2, 3, 4}));
    } else {
      // Streams write the file itself and never need a temporary name.
      ASSERT_TRUE(OpenOutputStream(path, ExistingContent::kAppend).ok());
      EXPECT_TRUE(attempts.empty());
    }
  }
  EXPECT_EQ(ReadBytes(victim), "precious");
  EXPECT_FALSE(fs::exists(dir + "/created_by_link"));
  EXPECT_EQ(ReadBytes(names[2]), "someone's file");
  EXPECT_TRUE(S_ISLNK(LstatMode(names[0])));
  EXPECT_TRUE(S_ISLNK(LstatMode(names[1])));
  EXPECT_TRUE(S_ISFIFO(LstatMode(names[3])));
  EXPECT_THAT(Listing(dir),
              ::testing::ElementsAre("out.json", "p0", "p1", "p2", "p3", "victim"));
}

TEST(OutputFile, GivesUpWhenEveryTemporaryNameIsTaken) {
  const std::string dir = FreshDir("all_taken");
  const std::string path = dir + "/w.bin";
  WriteBytes(path, "old");
  const std::string planted = dir + "/taken";
  ASSERT_EQ(::symlink(path.c_str(), planted.c_str()), 0);
  HookGuard hook([&](const std::string&, int) { return planted; });
  const absl::Status s = WriteOutputFile(path, "new");
  EXPECT_EQ(s.code(), absl::StatusCode::kAlreadyExists) << s;
  EXPECT_THAT(s.message(), HasSubstr(path));
  EXPECT_EQ(ReadBytes(path), "old");
}

// ---- Devices, FIFOs, descriptors ---------------------------------------------------------

TEST(OutputFile, FifoTargetStaysAFifoAndReceivesTheBytes) {
  const std::string dir = FreshDir("fifo");
  const std::string fifo = dir + "/pipe";
  const std::string link = dir + "/link_to_pipe";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0644), 0);
  ASSERT_EQ(::symlink(fifo.c_str(), link.c_str()), 0);
  const std::string payload(200000, 'p');  // more than a pipe holds: the reader must drain it
  for (const std::string& target : {fifo, link}) {
    std::string received;
    std::thread reader([&] {
      std::ifstream in(fifo, std::ios::binary);
      received.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    });
    EXPECT_TRUE(CheckOutputWritable(target).ok());
    auto f = OutputFile::Create(target);
    ASSERT_TRUE(f.ok()) << f.status();
    EXPECT_TRUE((*f)->in_place());
    ASSERT_TRUE((*f)->Write(payload).ok());
    ASSERT_TRUE((*f)->Commit().ok());
    reader.join();
    EXPECT_EQ(received.size(), payload.size()) << target;
    EXPECT_TRUE(S_ISFIFO(LstatMode(fifo)));
  }
  EXPECT_TRUE(S_ISLNK(LstatMode(link)));
  EXPECT_THAT(Listing(dir), ::testing::ElementsAre("link_to_pipe", "pipe"));
}

TEST(OutputFile, DevNullStaysACharacterDevice) {
  ASSERT_TRUE(CheckOutputWritable("/dev/null").ok());
  ASSERT_TRUE(WriteOutputFile("/dev/null", "discarded").ok());
  Tensor t = Tensor::Zeros({8}, DType::kF32);
  ASSERT_TRUE(WriteSafetensors("/dev/null", {{"w", t}}).ok());
  auto stream = OpenOutputStream("/dev/null", ExistingContent::kTruncate);
  ASSERT_TRUE(stream.ok()) << stream.status();
  EXPECT_GT(std::fputs("{}\n", stream->get()), -1);
  stream->reset();
  EXPECT_TRUE(S_ISCHR(LstatMode("/dev/null")));
  // Nothing was created next to it.
  for (const auto& e : fs::directory_iterator("/dev")) {
    EXPECT_FALSE(absl::StrContains(e.path().filename().string(), "null.tmp")) << e.path();
  }
}

// Direct I/O: aligned blocks go direct, and the first write that is not aligned (address,
// length or offset) turns it off for the rest; the file holds every byte in order either way.
TEST(OutputFile, DirectWritesMixedWithUnalignedOnesKeepEveryByte) {
  const std::string dir = FreshDir("direct");
  const std::string path = dir + "/out.bin";
  constexpr size_t kA = OutputFile::kDirectAlignment;
  std::vector<char> src(6 * kA + 100);
  for (size_t i = 0; i < src.size(); ++i) src[i] = static_cast<char>(i * 7 + 3);
  // An aligned copy for the direct writes (std::vector's data is not 4096-aligned).
  void* raw = std::aligned_alloc(kA, 6 * kA);
  ASSERT_NE(raw, nullptr);
  std::unique_ptr<char, decltype(&std::free)> aligned(static_cast<char*>(raw), &std::free);
  std::memcpy(aligned.get(), src.data(), 6 * kA);
  absl::StatusOr<std::unique_ptr<OutputFile>> out = OutputFile::Create(path);
  ASSERT_TRUE(out.ok()) << out.status();
  const bool direct = (*out)->EnableDirectIO();  // false on a filesystem without O_DIRECT
  ASSERT_TRUE((*out)->Write(aligned.get(), 2 * kA).ok());
  EXPECT_EQ((*out)->direct_io(), direct);
  // Aligned address and offset, length 1.5 blocks: one block direct, the rest buffered.
  ASSERT_TRUE((*out)->Write(aligned.get() + 2 * kA, kA + kA / 2).ok());
  EXPECT_FALSE((*out)->direct_io());
  ASSERT_TRUE((*out)->Write(src.data() + 3 * kA + kA / 2, src.size() - 3 * kA - kA / 2).ok());
  EXPECT_EQ((*out)->written(), src.size());
  ASSERT_TRUE((*out)->Commit().ok());
  EXPECT_EQ(ReadBytes(path), std::string(src.begin(), src.end()));
  // Written in place (a device), direct I/O is refused and nothing changes.
  absl::StatusOr<std::unique_ptr<OutputFile>> null = OutputFile::Create("/dev/null");
  ASSERT_TRUE(null.ok()) << null.status();
  EXPECT_FALSE((*null)->EnableDirectIO());
  EXPECT_TRUE((*null)->Write(src.data(), 10).ok());
  EXPECT_TRUE((*null)->Commit().ok());
}

TEST(OutputFile, DevFullReportsNoSpaceNamingThePath) {
  const absl::Status s = WriteOutputFile("/dev/full", "x");
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_THAT(s.message(), HasSubstr("/dev/full"));
  EXPECT_TRUE(S_ISCHR(LstatMode("/dev/full")));
}

TEST(OutputFile, DevFdNamesThisProcesssDescriptor) {
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  ASSERT_TRUE(WriteOutputFile(absl::StrCat("/dev/fd/", fds[1]), "via /dev/fd").ok());
  ASSERT_TRUE(WriteOutputFile(absl::StrCat("/proc/self/fd/", fds[1]), "+proc").ok());
  ::close(fds[1]);
  std::string got(64, '\0');
  got.resize(static_cast<size_t>(::read(fds[0], got.data(), got.size())));
  ::close(fds[0]);
  EXPECT_EQ(got, "via /dev/fd+proc");

  // A file the shell opened with `>>` is appended to, not replaced.
  const std::string dir = FreshDir("fd_file");
  const std::string path = dir + "/log";
  WriteBytes(path, "kept|");
  const int fd = ::open(path.c_str(), O_WRONLY | O_APPEND);
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(WriteOutputFile(absl::StrCat("/dev/fd/", fd), "added").ok());
  ::close(fd);
  EXPECT_EQ(ReadBytes(path), "kept|added");

  const absl::Status closed = WriteOutputFile("/dev/fd/999", "x");
  EXPECT_FALSE(closed.ok());
  EXPECT_THAT(closed.message(), HasSubstr("/dev/fd/999"));
}

// ---- Refused targets ---------------------------------------------------------------------

void ExpectRefused(const std::string& path, const std::vector<std::string>& fragments) {
  for (int how = 0; how < 3; ++how) {
    absl::Status s;
    if (how == 0) s = WriteOutputFile(path, "x");
    if (how == 1) s = CheckOutputWritable(path);
    if (how == 2) s = OpenOutputStream(path, ExistingContent::kTruncate).status();
    EXPECT_FALSE(s.ok()) << path << " how=" << how;
    EXPECT_THAT(s.message(), HasSubstr(path)) << how;
    for (const std::string& f : fragments) EXPECT_THAT(s.message(), HasSubstr(f)) << how;
  }
}

TEST(OutputFile, DirectoryTargetIsRefused) {
  const std::string dir = FreshDir("dir_target");
  fs::create_directories(dir + "/sub");
  ExpectRefused(dir + "/sub", {"is a directory"});
  EXPECT_TRUE(fs::is_directory(dir + "/sub"));
  EXPECT_TRUE(fs::is_empty(dir + "/sub"));
}

// The symlink policy: a link to a regular file is refused (not followed), and left alone.
TEST(OutputFile, SymlinkToARegularFileIsRefused) {
  const std::string dir = FreshDir("link_file");
  const std::string victim = dir + "/victim";
  WriteBytes(victim, "precious");
  const std::string link = dir + "/out";
  ASSERT_EQ(::symlink(victim.c_str(), link.c_str()), 0);
  ExpectRefused(link, {"symbolic link", victim});
  EXPECT_EQ(ReadBytes(victim), "precious");
  EXPECT_TRUE(S_ISLNK(LstatMode(link)));
  EXPECT_THAT(Listing(dir), ::testing::ElementsAre("out", "victim"));
}

TEST(OutputFile, DanglingSymlinkIsRefusedAndNothingIsCreated) {
  const std::string dir = FreshDir("dangling");
  const std::string link = dir + "/out";
  ASSERT_EQ(::symlink((dir + "/elsewhere").c_str(), link.c_str()), 0);
  ExpectRefused(link, {"dangling symbolic link"});
  EXPECT_FALSE(fs::exists(dir + "/elsewhere"));
}

TEST(OutputFile, SymlinkToADirectoryIsRefused) {
  const std::string dir = FreshDir("link_dir");
  fs::create_directories(dir + "/d");
  ASSERT_EQ(::symlink((dir + "/d").c_str(), (dir + "/out").c_str()), 0);
  ExpectRefused(dir + "/out", {"symbolic link", "a directory"});
}

TEST(OutputFile, ParentThatIsAFileOrMissingIsNamed) {
  const std::string dir = FreshDir("parents");
  WriteBytes(dir + "/file", "x");
  ExpectRefused(dir + "/file/w.bin", {"'" + dir + "/file' is not a directory"});
  ExpectRefused(dir + "/file/a/b/w.bin", {"'" + dir + "/file' is not a directory"});
  ExpectRefused(dir + "/missing/w.bin", {"directory '" + dir + "/missing' does not exist"});
  EXPECT_EQ(ReadBytes(dir + "/file"), "x");
}

TEST(OutputFile, CheckLeavesNoProbeBehind) {
  const std::string dir = FreshDir("probe");
  ASSERT_TRUE(CheckOutputWritable(dir + "/new").ok());
  WriteBytes(dir + "/old", "x");
  ASSERT_TRUE(CheckOutputWritable(dir + "/old").ok());
  EXPECT_THAT(Listing(dir), ::testing::ElementsAre("old"));
}

// A read-only directory, as root too: root ignores permission bits, so the check runs in a
// child process that gives up root (setuid to nobody) when the test runs as root. The same
// child checks that a file it may not write is refused even in a directory it may write.
TEST(OutputFile, ReadOnlyDirectoryFailsTheCheckNamingThePath) {
  const std::string dir = FreshDir("readonly");
  const std::string ro = dir + "/ro", rw = dir + "/rw";
  fs::create_directories(ro);
  fs::create_directories(rw);
  WriteBytes(ro + "/w.bin", "old");
  WriteBytes(rw + "/theirs.bin", "old");
  ASSERT_EQ(::chmod(ro.c_str(), 0555), 0);
  ASSERT_EQ(::chmod(rw.c_str(), 0777), 0);
  ASSERT_EQ(::chmod((rw + "/theirs.bin").c_str(), 0644), 0);
  ASSERT_EQ(::chmod(dir.c_str(), 0755), 0);
  ASSERT_EQ(::chmod(TempFolder().c_str(), 0755), 0);
  const bool root = ::geteuid() == 0;
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    // 65534 is `nobody` on Debian (and most Linux systems).
    if (root && (::setgid(65534) != 0 || ::setuid(65534) != 0)) ::_exit(10);
    int failures = 0;
    const auto expect = [&](const absl::Status& s, const std::string& path, const char* why) {
      if (s.ok() || !absl::StrContains(s.message(), path) || !absl::StrContains(s.message(), why)) {
        std::fprintf(stderr, "unexpected for %s: %s\n", path.c_str(), s.ToString().c_str());
        ++failures;
      }
    };
    expect(CheckOutputWritable(ro + "/new.bin"), ro, "Permission denied");
    expect(WriteOutputFile(ro + "/new.bin", "x"), ro, "Permission denied");
    expect(CheckOutputWritable(ro + "/w.bin"), ro + "/w.bin", "Permission denied");
    expect(WriteOutputFile(ro + "/w.bin", "x"), ro + "/w.bin", "Permission denied");
    if (root) {  // the file belongs to root, the directory lets anyone replace it
      expect(CheckOutputWritable(rw + "/theirs.bin"), rw + "/theirs.bin", "may not be written");
      expect(WriteOutputFile(rw + "/theirs.bin", "x"), rw + "/theirs.bin", "may not be written");
    }
    ::_exit(failures == 0 ? 0 : 1);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "10 = could not become nobody";
  EXPECT_EQ(ReadBytes(ro + "/w.bin"), "old");
  EXPECT_EQ(ReadBytes(rw + "/theirs.bin"), "old");
  EXPECT_THAT(Listing(ro), ::testing::ElementsAre("w.bin"));
  EXPECT_THAT(Listing(rw), ::testing::ElementsAre("theirs.bin"));
  ::chmod(ro.c_str(), 0755);
}

// ---- Streams -----------------------------------------------------------------------------

TEST(OutputStream, TruncatesOrAppendsAsAskedAndRefusesLinks) {
  const std::string dir = FreshDir("stream");
  const std::string path = dir + "/metrics.jsonl";
  WriteBytes(path, "old line\n");
  {
    auto s = OpenOutputStream(path, ExistingContent::kAppend);
    ASSERT_TRUE(s.ok()) << s.status();
    std::fputs("appended\n", s->get());
  }
  EXPECT_EQ(ReadBytes(path), "old line\nappended\n");
  {
    auto s = OpenOutputStream(path, ExistingContent::kTruncate);
    ASSERT_TRUE(s.ok()) << s.status();
    std::fputs("fresh\n", s->get());
  }
  EXPECT_EQ(ReadBytes(path), "fresh\n");
  const mode_t old = ::umask(022);
  auto created = OpenOutputStream(dir + "/new.jsonl", ExistingContent::kTruncate);
  ::umask(old);
  ASSERT_TRUE(created.ok()) << created.status();
  EXPECT_EQ(LstatMode(dir + "/new.jsonl") & 0777, 0644u);

  const std::string link = dir + "/link.jsonl";
  ASSERT_EQ(::symlink(path.c_str(), link.c_str()), 0);
  for (ExistingContent e : {ExistingContent::kTruncate, ExistingContent::kAppend}) {
    auto s = OpenOutputStream(link, e);
    EXPECT_FALSE(s.ok());
    EXPECT_THAT(s.status().message(), HasSubstr(link));
    EXPECT_THAT(s.status().message(), HasSubstr("symbolic link"));
  }
  EXPECT_EQ(ReadBytes(path), "fresh\n");
}

}  // namespace
}  // namespace lattice
