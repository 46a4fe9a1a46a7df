#include "file.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

ergo_status file_map(mapped_file *mf, const char *path, ergo_error *err) {
    mf->data = NULL;
    mf->size = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return ergo_fail(err, ERGO_E_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return ergo_fail(err, ERGO_E_IO, "%s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return ergo_fail(err, ERGO_E_IO, "%s: not a regular file", path);
    }
    if (st.st_size > 0) {
        void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) {
            int e = errno;
            close(fd);
            return ergo_fail(err, ERGO_E_IO, "%s: cannot map: %s", path, strerror(e));
        }
        mf->data = p;
        mf->size = (size_t)st.st_size;
    }
    close(fd); /* the mapping stays valid after close */
    return ERGO_OK;
}

void file_unmap(mapped_file *mf) {
    if (mf->data) munmap((void *)mf->data, mf->size);
    mf->data = NULL;
    mf->size = 0;
}

ergo_status file_read_all(const char *path, size_t max_bytes, char **out, size_t *size,
                          ergo_error *err) {
    *out = NULL;
    if (size) *size = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return ergo_fail(err, ERGO_E_IO, "%s: cannot open: %s", path, strerror(errno));
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap + 1);
    if (!buf) {
        fclose(f);
        return ergo_fail(err, ERGO_E_NOMEM, "%s: out of memory", path);
    }
    for (;;) {
        if (len == cap) {
            if (cap > max_bytes) break;
            size_t ncap = cap * 2;
            char *nb = realloc(buf, ncap + 1);
            if (!nb) {
                free(buf);
                fclose(f);
                return ergo_fail(err, ERGO_E_NOMEM, "%s: out of memory", path);
            }
            buf = nb;
            cap = ncap;
        }
        size_t n = fread(buf + len, 1, cap - len, f);
        len += n;
        if (n == 0) break;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        return ergo_fail(err, ERGO_E_IO, "%s: read error", path);
    }
    if (len > max_bytes) {
        free(buf);
        return ergo_fail(err, ERGO_E_LIMIT, "%s: larger than the limit of %zu bytes", path,
                         max_bytes);
    }
    buf[len] = '\0';
    *out = buf;
    if (size) *size = len;
    return ERGO_OK;
}

ergo_status file_write_all(const char *path, const void *data, size_t size, ergo_error *err) {
    FILE *f = fopen(path, "wb");
    if (!f) return ergo_fail(err, ERGO_E_IO, "%s: cannot create: %s", path, strerror(errno));
    size_t n = size ? fwrite(data, 1, size, f) : 0;
    int bad = (n != size) | (fclose(f) != 0);
    if (bad) return ergo_fail(err, ERGO_E_IO, "%s: write error", path);
    return ERGO_OK;
}

ergo_status path_fsync(const char *path, ergo_error *err) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return ergo_fail(err, ERGO_E_IO, "%s: cannot open to sync: %s", path, strerror(errno));
    if (fsync(fd) != 0) {
        int e = errno;
        close(fd);
        return ergo_fail(err, ERGO_E_IO, "%s: fsync failed: %s", path, strerror(e));
    }
    close(fd);
    return ERGO_OK;
}

int file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

int dir_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

ergo_status path_join(char *out, size_t out_size, const char *dir, const char *name,
                      ergo_error *err) {
    size_t dl = strlen(dir);
    int slash = dl > 0 && dir[dl - 1] != '/';
    int n = snprintf(out, out_size, "%s%s%s", dir, slash ? "/" : "", name);
    if (n < 0 || (size_t)n >= out_size)
        return ergo_fail(err, ERGO_E_ARG, "path too long: %s/%s", dir, name);
    return ERGO_OK;
}
