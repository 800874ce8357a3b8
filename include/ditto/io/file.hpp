// Files in and out, so that bad input never hangs and a failed write never looks like success.
//
//   std::string text = read_file("config.json", "--config", 64 << 20);  // regular files only
//   FileWriter out("out.safetensors", "save_safetensors(\"out.safetensors\")");
//   out.write(bytes, n);  // every write checked
//   out.commit();         // fsync, close, rename: the old file stays whole until this returns
//
// Reading: a path is opened without blocking (a FIFO with no writer would otherwise wait
// forever) and must be a regular file.
// Writing: a regular file or a new path is written to a temporary file in the same folder,
// fsynced and renamed over the target, so a full disk, a file-size limit or a crash leaves the
// previous file (or no file) and never a partial one. An existing target that is not a regular
// file (a device such as /dev/null or /dev/full, a FIFO, standard output) is written in place
// and never renamed over. A writer destroyed without commit() removes its temporary file.
#pragma once

#include <atomic>
#include <cerrno>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../core/error.hpp"

namespace ditto {

namespace detail {
inline std::string errno_text(int e) { return std::strerror(e); }

// Opens `path` read-only as a regular file; returns the descriptor (blocking mode restored).
// `what` starts every message, e.g. "--weights \"w.safetensors\"".
inline int open_regular_file(const std::string& path, const std::string& what, struct stat* st_out = nullptr) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) throw IoError(cat(what, ": cannot open: ", errno_text(errno)));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    const bool dir = S_ISDIR(st.st_mode);
    ::close(fd);
    throw IoError(cat(what, ": ", dir ? "is a directory" : "is not a regular file (a FIFO, socket or device)",
                      "; expected a regular file"));
  }
  const int flags = ::fcntl(fd, F_GETFL);
  if (flags >= 0) ::fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
  if (st_out) *st_out = st;
  return fd;
}

// Writes all of [data, data + n) to fd; false (errno set) on failure.
inline bool write_all(int fd, const void* data, std::size_t n) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n < (std::size_t{1} << 30) ? n : (std::size_t{1} << 30));
    if (w < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    if (w == 0) {
      errno = EIO;
      return false;
    }
    p += w;
    n -= static_cast<std::size_t>(w);
  }
  return true;
}
}  // namespace detail

// The whole of a regular file, at most `max_bytes` of it (a larger file is an error).
inline std::string read_file(const std::string& path, const std::string& what, std::uint64_t max_bytes) {
  struct stat st {};
  const int fd = detail::open_regular_file(path, what, &st);
  if (static_cast<std::uint64_t>(st.st_size) > max_bytes) {
    ::close(fd);
    throw IoError(detail::cat(what, ": the file has ", st.st_size, " bytes; at most ", max_bytes, " are read"));
  }
  std::string text(static_cast<std::size_t>(st.st_size), '\0');
  std::size_t got = 0;
  while (got < text.size()) {
    const ssize_t r = ::read(fd, text.data() + got, text.size() - got);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      const int e = r < 0 ? errno : 0;
      ::close(fd);
      throw IoError(detail::cat(what, ": read failed after ", got, " bytes: ", e ? detail::errno_text(e) : "the file shrank"));
    }
    got += static_cast<std::size_t>(r);
  }
  ::close(fd);
  return text;
}

class FileWriter {
 public:
  // `what` starts every message, e.g. "write_png(\"grid.png\")".
  FileWriter(const std::string& path, std::string what) : what_(std::move(what)) {
    if (path.empty()) throw IoError(what_ + ": the path is empty");
    struct stat st {};
    if (::stat(path.c_str(), &st) == 0 && !S_ISREG(st.st_mode)) {
      if (S_ISDIR(st.st_mode)) fail("the path is a directory");
      // a device or FIFO, in place; without blocking: a FIFO nobody reads is an error, not a hang
      fd_ = ::open(path.c_str(), O_WRONLY | O_CLOEXEC | O_NONBLOCK);
      if (fd_ < 0)
        fail(errno == ENXIO ? std::string("is a FIFO that nothing reads") : "cannot open for writing: " + detail::errno_text(errno));
      const int flags = ::fcntl(fd_, F_GETFL);
      if (flags >= 0) ::fcntl(fd_, F_SETFL, flags & ~O_NONBLOCK);
      return;
    }
    const bool exists = ::stat(path.c_str(), &st) == 0;
    // Through a symbolic link, the file it names is replaced (not the link).
    target_ = path;
    if (char* real = exists ? ::realpath(path.c_str(), nullptr) : nullptr) {
      target_ = real;
      std::free(real);
    }
    const auto slash = target_.rfind('/');
    const std::string dir = slash == std::string::npos ? "" : target_.substr(0, slash + 1);
    const std::string base = slash == std::string::npos ? target_ : target_.substr(slash + 1);
    static std::atomic<unsigned> counter{0};  // distinct names for writers in one process
    for (int attempt = 0; attempt < 100 && fd_ < 0; ++attempt) {
      temp_ = detail::cat(dir, ".", base, ".tmp-", ::getpid(), "-", counter++);
      // 0666 under the umask, as a plain open would create it; an existing file keeps its mode.
      fd_ = ::open(temp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, exists ? (st.st_mode & 07777) : 0666);
      if (fd_ < 0 && errno != EEXIST) fail("cannot create a file in its folder: " + detail::errno_text(errno));
    }
    if (fd_ < 0) fail("cannot find a free temporary name in its folder");
    if (exists) (void)::fchmod(fd_, st.st_mode & 07777);
  }
  FileWriter(const FileWriter&) = delete;
  FileWriter& operator=(const FileWriter&) = delete;
  ~FileWriter() { discard(); }

  void write(const void* data, std::size_t n) {
    if (fd_ < 0) fail("write after commit or failure");
    if (!detail::write_all(fd_, data, n)) fail("write failed: " + detail::errno_text(errno));
  }
  void write(const std::string& s) { write(s.data(), s.size()); }

  // Makes the file durable and puts it in place. After this the target holds the new bytes; if
  // it throws, the target holds what it held before.
  void commit() {
    if (fd_ < 0) fail("commit after failure");
    if (temp_.empty()) {  // a device or FIFO, written in place: nothing to sync or rename
      const int fd = fd_;
      fd_ = -1;
      if (::close(fd) != 0) fail("close failed: " + detail::errno_text(errno));
      return;
    }
    if (::fsync(fd_) != 0) fail("fsync failed: " + detail::errno_text(errno));
    const int fd = fd_;
    fd_ = -1;
    if (::close(fd) != 0) fail("close failed: " + detail::errno_text(errno));
    if (::rename(temp_.c_str(), target_.c_str()) != 0) fail("rename into place failed: " + detail::errno_text(errno));
    temp_.clear();
    // The rename itself is durable once the folder is synced (best effort: some file systems
    // refuse fsync on a folder).
    const auto slash = target_.rfind('/');
    const std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : target_.substr(0, slash));
    const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
      (void)::fsync(dfd);
      ::close(dfd);
    }
  }

 private:
  void discard() noexcept {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
    if (!temp_.empty()) ::unlink(temp_.c_str());
    temp_.clear();
  }
  [[noreturn]] void fail(const std::string& why) {
    discard();
    throw IoError(what_ + ": " + why);
  }

  std::string what_, target_, temp_;
  int fd_ = -1;
};

// Writes `bytes` to `path` through a FileWriter (atomically where the target is a regular file).
inline void write_file(const std::string& path, const void* bytes, std::size_t n, const std::string& what) {
  FileWriter f(path, what);
  f.write(bytes, n);
  f.commit();
}

}  // namespace ditto
