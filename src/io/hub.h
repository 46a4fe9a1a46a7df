/*
 * hub.h - checkpoints from the Hugging Face hub, cached on disk (libcurl).
 *
 * Mirrors huggingface_hub 0.36 (file_download.py, constants.py): the URL layout
 * `<endpoint>/<repo>/resolve/<revision>/<file>` (HF_ENDPOINT, default
 * https://huggingface.co; HF_TOKEN sent as `Authorization: Bearer`), and the
 * cache it writes, so a cache filled by Python is reused by ergo and the other
 * way round:
 *
 *   <cache>/models--owner--name/blobs/<etag>            the bytes (etag = sha256 for LFS files)
 *   <cache>/models--owner--name/snapshots/<commit>/<f>  relative symlink to ../../blobs/<etag>
 *   <cache>/models--owner--name/refs/<revision>         the commit of a branch or tag
 *   <cache>/models--owner--name/.no_exist/<commit>/<f>  an optional file the repo lacks
 *   <cache>/.locks/models--owner--name/<etag>.lock      flock'ed while a blob is written
 *
 * with <cache> = HF_HUB_CACHE, else $HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub,
 * else ~/.cache/huggingface/hub. Downloads go to `blobs/<etag>.incomplete` and resume
 * with a Range request. HF_HUB_OFFLINE=1 (or TRANSFORMERS_OFFLINE=1) uses the cache only.
 * Unlike huggingface_hub, a complete cached snapshot is used without asking the hub
 * again (no request at all: runs work offline); `ergo download` refreshes.
 *
 *   char dir[4096];
 *   if (hub_resolve_model("nota-ai/ERGO-7B", dir, sizeof dir, &err) != ERGO_OK) ...
 *   model_load(&m, dir, &err);
 */
#ifndef ERGO_HUB_H
#define ERGO_HUB_H

#include <stddef.h>

#include "base/status.h"

/* Turns a --model argument into a local directory. An existing directory is returned as is.
 * Anything else that looks like `owner/name` (optionally `owner/name@revision`) is fetched from
 * the hub into the cache (reused when complete) and the snapshot directory is returned.
 * Fails with one clear line (no network: say so plainly and say how to pass a local directory). */
ergo_status hub_resolve_model(const char *model_arg, char *dir_out, size_t dir_out_size, ergo_error *err);

/* `ergo download`: like hub_resolve_model for a repository id only, but asks the hub
 * even when the cache is complete, so a branch moved to a new commit is followed
 * (files already cached are not downloaded again). Offline, the cache is used. */
ergo_status hub_download(const char *repo_arg, char *dir_out, size_t dir_out_size, ergo_error *err);

/* 1 when s has the shape of a hub repository id `owner/name` (optionally `@revision`),
 * as huggingface_hub's validate_repo_id accepts it. */
int hub_is_repo_id(const char *s);

/* The cache root described above, into out. */
ergo_status hub_cache_dir(char *out, size_t out_size, ergo_error *err);

#endif
