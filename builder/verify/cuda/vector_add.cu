// Kiln's GPU check for CUDA images (builder/verify/container_run.py, case "gpu vector add"):
// add two vectors on the device, compare every element with the host's sum, and exit non-zero on
// any CUDA error or mismatch. Compiled with the image's nvcc and run with `docker run --gpus all`.
#include <cstdio>
#include <cstdlib>
#include <cuda_runtime.h>

#define CHECK(call)                                                                           \
    do {                                                                                      \
        cudaError_t err_ = (call);                                                            \
        if (err_ != cudaSuccess) {                                                            \
            std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call,                \
                         cudaGetErrorString(err_));                                           \
            return 2;                                                                         \
        }                                                                                     \
    } while (0)

__global__ void vector_add(const float *a, const float *b, float *c, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) c[i] = a[i] + b[i];
}

int main() {
    const int n = 1 << 20;
    const size_t bytes = n * sizeof(float);
    float *a = (float *)std::malloc(bytes), *b = (float *)std::malloc(bytes), *c = (float *)std::malloc(bytes);
    if (!a || !b || !c) { std::fprintf(stderr, "out of host memory\n"); return 2; }
    for (int i = 0; i < n; ++i) { a[i] = (float)i; b[i] = 2.0f * (float)(n - i); c[i] = -1.0f; }

    int devices = 0;
    CHECK(cudaGetDeviceCount(&devices));
    cudaDeviceProp prop;
    CHECK(cudaGetDeviceProperties(&prop, 0));
    std::printf("device 0 of %d: %s (compute %d.%d)\n", devices, prop.name, prop.major, prop.minor);

    float *da, *db, *dc;
    CHECK(cudaMalloc(&da, bytes));
    CHECK(cudaMalloc(&db, bytes));
    CHECK(cudaMalloc(&dc, bytes));
    CHECK(cudaMemcpy(da, a, bytes, cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(db, b, bytes, cudaMemcpyHostToDevice));
    const int threads = 256, blocks = (n + threads - 1) / threads;
    vector_add<<<blocks, threads>>>(da, db, dc, n);
    CHECK(cudaGetLastError());
    CHECK(cudaDeviceSynchronize());
    CHECK(cudaMemcpy(c, dc, bytes, cudaMemcpyDeviceToHost));

    int wrong = 0;
    for (int i = 0; i < n; ++i) {
        if (c[i] != a[i] + b[i]) {
            if (wrong < 5) std::fprintf(stderr, "c[%d] = %f, expected %f\n", i, c[i], a[i] + b[i]);
            ++wrong;
        }
    }
    CHECK(cudaFree(da));
    CHECK(cudaFree(db));
    CHECK(cudaFree(dc));
    std::free(a); std::free(b); std::free(c);
    if (wrong) { std::fprintf(stderr, "vector add: %d of %d elements wrong\n", wrong, n); return 1; }
    std::printf("vector add: %d elements correct\n", n);
    return 0;
}
