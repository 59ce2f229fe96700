"""What the kernels were compiled with: OpenMP or not, and OpenMP's thread limit; and where
the threads of a team run (for the benchmark)."""

from cpython cimport array
import array

cdef extern from *:
    """
    #if defined(__linux__) && !defined(_GNU_SOURCE)
    #define _GNU_SOURCE
    #endif
    #ifdef __linux__
    #include <sched.h>
    #define FASTCONV_CPU_OF_THREAD() sched_getcpu()
    #else
    #define FASTCONV_CPU_OF_THREAD() (-1)
    #endif
    #ifdef _OPENMP
    #include <omp.h>
    #define FASTCONV_OPENMP 1
    static int fastconv_omp_max_threads(void) { return omp_get_max_threads(); }
    static void fastconv_team_cpus(int n, int *cpus) {
        #pragma omp parallel num_threads(n)
        {
            int t = omp_get_thread_num();
            if (t < n) cpus[t] = FASTCONV_CPU_OF_THREAD();
        }
    }
    #else
    #define FASTCONV_OPENMP 0
    static int fastconv_omp_max_threads(void) { return 1; }
    static void fastconv_team_cpus(int n, int *cpus) { cpus[0] = FASTCONV_CPU_OF_THREAD(); }
    #endif
    """
    int FASTCONV_OPENMP
    int fastconv_omp_max_threads() noexcept nogil
    void fastconv_team_cpus(int n, int *cpus) noexcept nogil


def openmp_enabled():
    """True when the kernels were compiled with OpenMP."""
    return bool(FASTCONV_OPENMP)


def omp_max_threads():
    """OpenMP's default team size (honours ``OMP_NUM_THREADS``); 1 without OpenMP."""
    return fastconv_omp_max_threads()


def team_cpus(int n_threads):
    """The CPU each thread of a team of ``n_threads`` runs on at the start of a parallel
    region (``sched_getcpu``), thread 0 first; fewer when OpenMP gives a smaller team (or
    none without OpenMP); -1 where the platform cannot tell (not Linux)."""
    if n_threads < 1:
        raise ValueError(f"team_cpus: n_threads must be >= 1, got {n_threads}")
    cdef int[::1] cpus = array.array("i", [-2] * n_threads)
    with nogil:
        fastconv_team_cpus(n_threads, &cpus[0])
    return [c for c in cpus if c != -2]
