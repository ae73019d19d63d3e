"""The checksum record of `yurthub.cache.store.FilesystemObjectStore`: written by the idle
writer (and at close), it lets a load take files that are as the writer left them without
decoding them, and never changes what a load finds: a file changed, damaged or added
behind its back is checked in full, and a record that is missing, damaged or half
written only means every file is.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import zlib
from typing import Any, cast

from twisted.internet import reactor
from twisted.logger import ILogObserver, LogLevel, globalLogPublisher

import yurthub.cache.store as store_module
from tests.support import sleep, wait_until
from tests.test_store import (
    NODES,
    PODS,
    FilesystemStoreCase,
    files_under,
    pod,
    pod_key,
    temp_files,
    write_file,
)
from yurthub.cache.keys import CacheKey, InvalidKey
from yurthub.cache.store import (
    CHECKSUMS_NAME,
    DOCUMENTS_DIR,
    ChecksumRecord,
    FilesystemObjectStore,
    _Disk,
    check_document_name,
)


def record_path(directory: str) -> str:
    return os.path.join(directory, DOCUMENTS_DIR, CHECKSUMS_NAME)


def read_record(directory: str) -> dict[str, Any] | None:
    with open(record_path(directory), "rb") as f:
        return ChecksumRecord.decode(f.read())


class Crash(BaseException):
    """The process dies where it is."""


class RecordCrashDisk(_Disk):
    """A `_Disk` that crashes just before the checksum record's temp file is renamed
    over the record, or fails that rename with ``fault``."""

    def __init__(self, fault: int | None = None) -> None:
        super().__init__()
        self.fault = fault

    def rename(self, source: str, target: str) -> None:
        if os.path.basename(target) == CHECKSUMS_NAME:
            if self.fault is None:
                raise Crash(f"crash before renaming {source}")
            raise OSError(self.fault, os.strerror(self.fault), target)
        super().rename(source, target)


class ChecksumRecordTests(FilesystemStoreCase):
    """What the writer records, when, and what a load makes of it."""

    def setUp(self) -> None:
        # Any change makes the record due, so small stores exercise it.
        self.patch(store_module, "RECORD_MIN_CHANGES", 1)
        self.patch(store_module, "RECORD_MIN_SHARE", 0)
        self.full_checks: list[bytes] = []
        real = store_module._resource_version

        def counting(data: bytes) -> Any:
            self.full_checks.append(data)
            return real(data)

        self.counting = counting

    def count_full_checks(self) -> None:
        """From now on, every full check (decode) of a file is counted."""
        self.patch(store_module, "_resource_version", self.counting)

    async def filled(self, count: int = 20) -> tuple[str, dict[CacheKey, bytes]]:
        """A directory written by a store that has since closed, and its objects."""
        directory = self.mktemp()
        store = await self.loaded_store(directory)
        objects = {}
        for i in range(count):
            key, data = pod_key(f"p{i}", f"ns{i % 3}"), pod(f"p{i}", str(i + 1), f"ns{i % 3}")
            store.put(key, str(i + 1), data)
            objects[key] = data
        node = CacheKey("kubelet", NODES, "", "edge-1")
        objects[node] = b'{"metadata":{"name":"edge-1","resourceVersion":"7"}}'
        store.put(node, "7", objects[node])
        await store.close()
        return directory, objects

    def entries(self, store: FilesystemObjectStore) -> dict[CacheKey, Any]:
        """Every object the store holds: key -> (resourceVersion, bytes)."""
        out = {}
        for component in store.components():
            for gvr in (PODS, NODES):
                for key, _ in store.list(component, gvr):
                    out[key] = store._index.entry(key)
        return out

    async def test_the_idle_writer_records_every_file_it_wrote(self) -> None:
        directory = self.mktemp()
        store = await self.loaded_store(directory)
        data = pod("a", "5")
        store.put(pod_key("a"), "5", data)
        store.put(pod_key("b"), "6", pod("b", "6"))
        await store.flush()
        await wait_until(lambda: os.path.exists(record_path(directory)), what="record written")
        sections = read_record(directory)
        assert sections is not None
        self.assertEqual(sorted(sections), ["kubelet/pods.v1.core/default"])
        self.assertEqual(
            sections["kubelet/pods.v1.core/default"]["a"], len(data) << 32 | zlib.crc32(data)
        )
        self.assertEqual(sorted(sections["kubelet/pods.v1.core/default"]), ["a", "b"])
        # A delete takes the file's entry out at the next rewrite.
        store.delete(pod_key("b"))
        await store.flush()
        await wait_until(
            lambda: sorted((read_record(directory) or {})["kubelet/pods.v1.core/default"]) == ["a"],
            what="record rewritten",
        )
        self.assertEqual(store.health.errors, 0)

    async def test_a_few_changes_do_not_rewrite_the_record(self) -> None:
        self.patch(store_module, "RECORD_MIN_CHANGES", 5)
        self.patch(store_module, "PACK_DELAY", 0.05)
        directory = self.mktemp()
        store = await self.loaded_store(directory)
        for i in range(4):
            store.put(pod_key(f"p{i}"), "1", pod(f"p{i}", "1"))
        await store.flush()
        await sleep(0.3)
        self.assertFalse(os.path.exists(record_path(directory)))
        store.put(pod_key("p4"), "1", pod("p4", "1"))
        await store.flush()
        await wait_until(lambda: os.path.exists(record_path(directory)), what="record written")

    async def test_a_big_record_waits_for_a_share_of_its_entries_to_change(self) -> None:
        directory, objects = await self.filled(40)
        self.patch(store_module, "RECORD_MIN_SHARE", 0.25)
        self.patch(store_module, "PACK_DELAY", 0.05)
        written = os.stat(record_path(directory)).st_mtime_ns
        store = await self.loaded_store(directory)
        for i in range(9):
            store.put(pod_key(f"p{i}", f"ns{i % 3}"), "100", pod(f"p{i}", "100", f"ns{i % 3}"))
        await store.flush()
        await sleep(0.3)
        self.assertEqual(os.stat(record_path(directory)).st_mtime_ns, written)
        for i in (9, 10):  # 11 of 41 entries: a quarter
            store.put(pod_key(f"p{i}", f"ns{i % 3}"), "100", pod(f"p{i}", "100", f"ns{i % 3}"))
        await store.flush()
        await wait_until(
            lambda: os.stat(record_path(directory)).st_mtime_ns != written, what="rewritten"
        )

    async def test_an_old_record_is_rewritten_after_the_max_age_even_for_one_change(
        self,
    ) -> None:
        self.patch(store_module, "RECORD_MIN_CHANGES", 1000)
        self.patch(store_module, "RECORD_MAX_AGE", 0.3)
        self.patch(store_module, "PACK_DELAY", 0.05)
        directory = self.mktemp()
        store = await self.loaded_store(directory)
        store.put(pod_key("a"), "1", pod("a", "1"))
        await store.flush()
        await wait_until(lambda: os.path.exists(record_path(directory)), what="record written")

    async def test_a_restart_takes_recorded_files_without_decoding_them(self) -> None:
        directory, objects = await self.filled()
        self.assertIsNotNone(read_record(directory))
        self.count_full_checks()
        store = await self.loaded_store(directory)
        self.assertEqual(self.full_checks, [])
        self.assertEqual({k: d for k, (_, d) in self.entries(store).items()}, objects)
        self.assertEqual(
            store._index.entry(pod_key("p4", "ns1")), ("5", objects[pod_key("p4", "ns1")])
        )
        self.assertEqual(store.health.corrupt_files, 0)
        self.assertEqual(len(store._index), len(objects))
        # The versions keep the rules going across the restart.
        self.assertFalse(store.put(pod_key("p4", "ns1"), "4", pod("p4", "4", "ns1")))
        self.assertTrue(store.put(pod_key("p4", "ns1"), "6", pod("p4", "6", "ns1")))

    async def test_a_load_finds_what_it_would_find_without_the_record(self) -> None:
        directory = self.mktemp()
        store = await self.loaded_store(directory)
        odd = {
            # The first resourceVersion in the bytes is not the object's.
            "first-is-another": b'{"status":{"resourceVersion":"99"},"metadata":{"resourceVersion":"3"}}',
            # Written with spaces, as Python's encoder does.
            "spaced": json.dumps({"metadata": {"name": "s", "resourceVersion": "4"}}).encode(),
            # No version (loads at "0"), an empty one, a number, an opaque one.
            "none": b'{"metadata":{"name":"none"}}',
            "empty": b'{"metadata":{"resourceVersion":""}}',
            "number": b'{"metadata":{"resourceVersion":12}}',
            "opaque": b'{"metadata":{"resourceVersion":"a b\\n\\u00e9"}}',
            # Not what a load would take at all.
            "garbage": b"{nope",
            "array": b"[1]",
            "truncated": b'{"metadata":{"resourceVersion":"5"}',
            "plain": pod("plain", "8"),
        }
        for name, data in odd.items():
            store.put(pod_key(name), "1", data)
        # A version the caller keeps apart from bytes that say another.
        store.put(pod_key("told"), "50", pod("told", "40"))
        await store.flush()
        store.forget_versions()
        store.put(pod_key("after-forget"), "", pod("after-forget", "9"))
        await store.close()
        self.assertIsNotNone(read_record(directory))
        bare = self.mktemp()
        shutil.copytree(directory, bare)
        os.unlink(record_path(bare))

        with_record = await self.loaded_store(directory)
        without = await self.loaded_store(bare)
        self.assertEqual(self.entries(with_record), self.entries(without))
        self.assertEqual(with_record.health.corrupt_files, without.health.corrupt_files)
        self.assertEqual(with_record.health.corrupt_files, 3)
        self.assertEqual(self.entries(with_record)[pod_key("none")][0], "0")
        self.assertEqual(self.entries(with_record)[pod_key("first-is-another")][0], "3")
        # Nothing a load refuses is in the record.
        section = (read_record(directory) or {})["kubelet/pods.v1.core/default"]
        self.assertFalse({"garbage", "array", "truncated"} & set(section))

    async def test_a_file_changed_behind_the_records_back_is_checked_in_full(self) -> None:
        directory, objects = await self.filled()
        base = os.path.join(directory, "kubelet/pods.v1.core")
        # Another valid object of the same length, at another version.
        same_length = pod("p0", "9", "ns0")
        self.assertEqual(len(same_length), len(objects[pod_key("p0", "ns0")]))
        write_file(os.path.join(base, "ns0/p0"), same_length)
        # A flipped byte (same length), a torn file, a file the record never saw.
        write_file(
            os.path.join(base, "ns1/p1"), objects[pod_key("p1", "ns1")].replace(b'"', b"'", 1)
        )
        write_file(os.path.join(base, "ns2/p2"), objects[pod_key("p2", "ns2")][:-7])
        write_file(os.path.join(base, "ns2/new"), pod("new", "3", "ns2"))
        self.count_full_checks()
        store = await self.loaded_store(directory)
        self.assertEqual(len(self.full_checks), 4)
        self.assertEqual(store._index.entry(pod_key("p0", "ns0")), ("9", same_length))
        self.assertEqual(store._index.entry(pod_key("new", "ns2")), ("3", pod("new", "3", "ns2")))
        self.assertIsNone(store.get(pod_key("p1", "ns1")))
        self.assertIsNone(store.get(pod_key("p2", "ns2")))
        self.assertEqual(store.health.corrupt_files, 2)
        self.assertEqual(store.get(pod_key("p3", "ns0")), objects[pod_key("p3", "ns0")])
        await store.close()
        # The record now vouches for the new files, and for nothing refused.
        self.full_checks.clear()
        again = await self.loaded_store(directory)
        self.assertEqual(len(self.full_checks), 2)  # the two refused files, again
        self.assertEqual(again._index.entry(pod_key("p0", "ns0")), ("9", same_length))

    async def assert_full_checks_and_nothing_lost(self, directory: str, objects: dict) -> None:
        events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        self.full_checks.clear()
        store = await self.loaded_store(directory)
        self.assertEqual({k: d for k, (_, d) in self.entries(store).items()}, objects)
        self.assertEqual(len(self.full_checks), len(objects))
        self.assertEqual(store.health.corrupt_files, 0)
        self.assertFalse(store.health.degraded)
        self.assertEqual(store.get_document(CHECKSUMS_NAME), None)
        self.assertTrue(
            any(
                e.get("log_level") == LogLevel.debug
                and "checked in full" in e.get("log_format", "")
                for e in events
            )
        )
        self.assertEqual(temp_files(directory), [])
        await store.close()
        # The close wrote a good record again.
        self.full_checks.clear()
        await self.loaded_store(directory)
        self.assertEqual(self.full_checks, [])

    async def test_a_file_longer_than_recorded_is_read_whole_and_checked(self) -> None:
        directory, objects = await self.filled()
        base = os.path.join(directory, "kubelet/pods.v1.core")
        # The record gives the old length: the load reads that much first (no fstat),
        # then the rest of the file, and decodes it.
        longer = json.dumps(
            {"metadata": {"name": "p0", "namespace": "ns0", "resourceVersion": "30"}, "spec": {"x": "y" * 5000}}
        ).encode()
        self.assertGreater(len(longer), len(objects[pod_key("p0", "ns0")]))
        write_file(os.path.join(base, "ns0/p0"), longer)
        self.count_full_checks()
        store = await self.loaded_store(directory)
        self.assertEqual(self.full_checks, [longer])
        self.assertEqual(store._index.entry(pod_key("p0", "ns0")), ("30", longer))
        self.assertEqual(store.health.corrupt_files, 0)
        self.assertEqual(len(store._index), len(objects))

    async def test_a_missing_record_means_full_checks(self) -> None:
        directory, objects = await self.filled()
        os.unlink(record_path(directory))
        self.count_full_checks()
        await self.assert_full_checks_and_nothing_lost(directory, objects)

    async def test_a_damaged_record_means_full_checks(self) -> None:
        directory, objects = await self.filled()
        with open(record_path(directory), "rb") as f:
            good = f.read()
        head, _, body = good.partition(b"\n")
        digit = re.search(rb":(\d)", body).start(1)  # type: ignore[union-attr]
        other = b"1" if body[digit : digit + 1] != b"1" else b"2"
        damaged = {
            "garbage": b"\x00\xff garbage",
            "truncated": good[: len(good) // 2],
            "empty": b"",
            # One digit of one entry changed: the record's own CRC no longer matches.
            "flipped": head + b"\n" + body[:digit] + other + body[digit + 1 :],
            "another version": good.replace(b"yurthub-checksums 1", b"yurthub-checksums 2", 1),
            "not an object": b"yurthub-checksums 1 %08x 2\n[]" % zlib.crc32(b"[]"),
        }
        self.count_full_checks()
        for what, data in damaged.items():
            with open(record_path(directory), "wb") as f:
                f.write(data)
            try:
                await self.assert_full_checks_and_nothing_lost(directory, objects)
            except AssertionError as e:
                raise AssertionError(f"record {what}: {e}") from None

    async def test_a_record_that_is_a_directory_or_a_symlink_is_not_followed(self) -> None:
        directory, objects = await self.filled()
        os.unlink(record_path(directory))
        outside = os.path.abspath(self.mktemp())
        os.makedirs(outside)
        os.symlink(outside, record_path(directory))
        self.count_full_checks()
        self.full_checks.clear()
        store = await self.loaded_store(directory)
        self.assertEqual(len(self.full_checks), len(objects))
        self.assertEqual(store.health.corrupt_files, 0)
        await store.close()
        self.assertEqual(os.listdir(outside), [])
        self.assertTrue(
            os.path.islink(record_path(directory)) or os.path.isfile(record_path(directory))
        )

    async def test_a_crash_while_writing_the_record_leaves_a_temp_file_a_load_removes(
        self,
    ) -> None:
        directory, objects = await self.filled()
        first = read_record(directory)
        store = FilesystemObjectStore(directory, reactor=reactor, disk=RecordCrashDisk())
        await store.load()
        changed = pod("p0", "100", "ns0")
        store.put(pod_key("p0", "ns0"), "100", changed)
        await store.flush()
        await wait_until(lambda: temp_files(directory), what="the crash mid-record")
        await store.close()
        self.assertTrue(store.health.degraded)  # the writer died with the "crash"
        self.assertEqual(read_record(directory), first)
        leftovers = temp_files(directory)
        self.assertEqual([os.path.dirname(p) for p in leftovers], [DOCUMENTS_DIR])
        self.count_full_checks()
        again = await self.loaded_store(directory)
        self.assertEqual(temp_files(directory), [])
        self.assertEqual(again.health.corrupt_files, 0)
        self.assertEqual(again.get_document(os.path.basename(leftovers[0])), None)
        self.assertEqual(again._index.entry(pod_key("p0", "ns0")), ("100", changed))
        # Only the file written after the old record was decoded.
        self.assertEqual(self.full_checks, [changed])

    async def test_a_record_that_cannot_be_written_is_no_disk_error(self) -> None:
        directory = self.mktemp()
        store = await self.loaded_store(directory, disk=RecordCrashDisk(errno.ENOSPC))
        store.put(pod_key("a"), "1", pod("a", "1"))
        await store.flush()
        await sleep(store_module.PACK_DELAY + 0.3)
        self.assertEqual(store.health.errors, 0)
        self.assertFalse(store.health.degraded)
        self.assertFalse(os.path.exists(record_path(directory)))
        self.assertEqual(temp_files(directory), [])
        await store.close()
        self.assertEqual(store.health.errors, 0)
        self.assertEqual(
            files_under(os.path.join(directory, "kubelet")),
            {"pods.v1.core/default/a": pod("a", "1")},
        )

    def test_checksums_is_no_document_name(self) -> None:
        self.assertRaises(InvalidKey, check_document_name, CHECKSUMS_NAME)


class RecordAtCloseTests(FilesystemStoreCase):
    """With the usual thresholds: a list's worth of changes is recorded at close even when
    the writer never went idle, and a few changes are not worth a rewrite."""

    async def test_a_big_change_is_recorded_at_close(self) -> None:
        self.patch(store_module, "PACK_DELAY", 60.0)  # never idle during the test
        directory = self.mktemp()
        store = await self.loaded_store(directory)
        count = store_module.RECORD_MIN_CHANGES
        store.replace(
            "kubelet",
            PODS,
            "default",
            {pod_key(f"p{i}"): (str(i + 1), pod(f"p{i}", str(i + 1))) for i in range(count)},
            str(count),
        )
        await store.flush()
        self.assertFalse(os.path.exists(record_path(directory)))
        await store.close()
        section = (read_record(directory) or {})["kubelet/pods.v1.core/default"]
        self.assertEqual(len(section), count)

    async def test_a_few_changes_are_not_recorded_at_close(self) -> None:
        directory = self.mktemp()
        store = await self.loaded_store(directory)
        store.put(pod_key("a"), "1", pod("a", "1"))
        await store.close()
        self.assertFalse(os.path.exists(record_path(directory)))
        again = await self.loaded_store(directory)
        self.assertEqual(again.get(pod_key("a")), pod("a", "1"))
