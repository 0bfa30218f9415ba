// The staging read with no Python at all: the bound that `read_bandwidth.py`'s ways are held to.
// T threads each pread C-byte chunks of the files into one of B pinned buffers and copy each to the
// GPU on their own stream (cudaMemcpyAsync), as catalog.reader does. Prints the best of R runs.
//   nvcc -O2 -o /tmp/stage_bound benchmarks/stage_bound.cu && /tmp/stage_bound T C_MiB B R FILE...
#include <cuda_runtime.h>
#include <fcntl.h>
#include <pthread.h>
#include <atomic>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define CHECK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { fprintf(stderr, "%s: %s\n", #x, cudaGetErrorString(e)); exit(1); } } while (0)

typedef struct { int fd; off_t offset; size_t n; char *dest; } Piece;
static Piece *pieces; static long npieces; static std::atomic<long> next_piece;
static size_t chunk; static int buffers;

static void *work(void *arg) {
  (void)arg;
  cudaStream_t stream; CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  char *buf[8]; cudaEvent_t ev[8];
  for (int b = 0; b < buffers; b++) {
    CHECK(cudaHostAlloc((void **)&buf[b], chunk, cudaHostAllocDefault));
    CHECK(cudaEventCreateWithFlags(&ev[b], cudaEventDisableTiming));
    CHECK(cudaEventRecord(ev[b], stream));
  }
  for (long k = 0;; k++) {
    long i = next_piece.fetch_add(1);
    if (i >= npieces) break;
    int slot = k % buffers;
    CHECK(cudaEventSynchronize(ev[slot]));
    size_t done = 0;
    while (done < pieces[i].n) {
      ssize_t got = pread(pieces[i].fd, buf[slot] + done, pieces[i].n - done, pieces[i].offset + done);
      if (got <= 0) { perror("pread"); exit(1); }
      done += got;
    }
    CHECK(cudaMemcpyAsync(pieces[i].dest, buf[slot], pieces[i].n, cudaMemcpyHostToDevice, stream));
    CHECK(cudaEventRecord(ev[slot], stream));
  }
  CHECK(cudaStreamSynchronize(stream));
  for (int b = 0; b < buffers; b++) { CHECK(cudaFreeHost(buf[b])); CHECK(cudaEventDestroy(ev[b])); }
  CHECK(cudaStreamDestroy(stream));
  return NULL;
}

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }

int main(int argc, char **argv) {
  if (argc < 6) { fprintf(stderr, "usage: %s THREADS CHUNK_MIB BUFFERS REPEATS FILE...\n", argv[0]); return 2; }
  int threads = atoi(argv[1]); double mib = atof(argv[2]); buffers = atoi(argv[3]); int repeats = atoi(argv[4]);
  chunk = (size_t)(mib * (1 << 20));
  if (threads < 1 || threads > 256) { fprintf(stderr, "1 to 256 threads\n"); return 2; }
  if (!(mib > 0) || chunk == 0) { fprintf(stderr, "the chunk must be a positive number of MiB\n"); return 2; }
  if (buffers < 1 || buffers > 8) { fprintf(stderr, "1 to 8 buffers\n"); return 2; }
  if (repeats < 1) { fprintf(stderr, "at least 1 repeat\n"); return 2; }
  size_t total = 0; int nfiles = argc - 5; size_t sizes[64]; int fds[64];
  if (nfiles > 64) { fprintf(stderr, "at most 64 files\n"); return 2; }
  for (int f = 0; f < nfiles; f++) {
    struct stat st; fds[f] = open(argv[5 + f], O_RDONLY); if (fds[f] < 0 || fstat(fds[f], &st)) { perror(argv[5 + f]); return 1; }
    sizes[f] = st.st_size; total += st.st_size;
  }
  if (total == 0) { fprintf(stderr, "the files are empty\n"); return 2; }
  char *dev; CHECK(cudaMalloc((void **)&dev, total));
  npieces = 0; for (int f = 0; f < nfiles; f++) npieces += (sizes[f] + chunk - 1) / chunk;
  pieces = (Piece *)malloc(npieces * sizeof(Piece));
  long i = 0; size_t at = 0;
  for (int f = 0; f < nfiles; f++) {
    for (size_t o = 0; o < sizes[f]; o += chunk) {
      size_t n = sizes[f] - o < chunk ? sizes[f] - o : chunk;
      pieces[i++] = (Piece){fds[f], (off_t)o, n, dev + at + o};
    }
    at += sizes[f];
  }
  double best = 1e9;
  for (int r = 0; r < repeats; r++) {
    next_piece.store(0);
    CHECK(cudaDeviceSynchronize());
    double t0 = now();
    pthread_t tid[256];
    for (int t = 0; t < threads; t++) pthread_create(&tid[t], NULL, work, NULL);
    for (int t = 0; t < threads; t++) pthread_join(tid[t], NULL);
    CHECK(cudaDeviceSynchronize());
    double s = now() - t0; if (s < best) best = s;
  }
  // check: the last chunk of the last file, read back and compared with the file
  size_t n = pieces[npieces - 1].n; char *host = (char *)malloc(n), *file = (char *)malloc(n);
  CHECK(cudaMemcpy(host, pieces[npieces - 1].dest, n, cudaMemcpyDeviceToHost));
  if (pread(pieces[npieces - 1].fd, file, n, pieces[npieces - 1].offset) != (ssize_t)n) { perror("pread"); return 1; }
  for (size_t k = 0; k < n; k++) if (host[k] != file[k]) { fprintf(stderr, "mismatch at byte %zu of the last chunk\n", k); return 1; }
  printf("{\"way\": \"C T%d/C%g/B%d\", \"bytes\": %zu, \"best_s\": %.4f, \"GBps\": %.2f}\n", threads, atof(argv[2]), buffers, total, best, total / best / 1e9);
  return 0;
}
