"""What the kernels were compiled with: OpenMP or not, and OpenMP's thread limit."""

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    #define FASTCONV_OPENMP 1
    static int fastconv_omp_max_threads(void) { return omp_get_max_threads(); }
    #else
    #define FASTCONV_OPENMP 0
    static int fastconv_omp_max_threads(void) { return 1; }
    #endif
    """
    int FASTCONV_OPENMP
    int fastconv_omp_max_threads() noexcept nogil


def openmp_enabled():
    """True when the kernels were compiled with OpenMP."""
    return bool(FASTCONV_OPENMP)


def omp_max_threads():
    """OpenMP's default team size (honours ``OMP_NUM_THREADS``); 1 without OpenMP."""
    return fastconv_omp_max_threads()
