"""Datasets: import (checked, then committed), inspect, edit, export and delete."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import BinaryIO

from engine.data.archives import ImportLimits, save_upload
from engine.data.export import export_zip
from engine.data.importers import SPLITS
from engine.data.inspect import audio_view, dataset_stats
from engine.data.pipeline import (ImportOptions, ImportPlan, Progress, clean_stale_staging,
                                  content_version, discard, prepare_import, staging_name,
                                  version_after_change, write_dataset)
from engine.demo import DEMO_ASSETS
from engine.errors import AuthError, DatasetError, NotFoundError
from engine.settings import load_config
from engine.text import check_name
from storage import LOCAL_USER_ID, safe_name


def _import_roots(config) -> list[Path]:
    """LIM_IMPORT_ROOTS as resolved folders (the data home never counts, see check_server_path)."""
    return [Path(part).expanduser().resolve() for part in config.import_roots.split(":") if part.strip()]


class DatasetsMixin:
    # ------------------------------------------------------------------ datasets
    def list_datasets(self) -> list[dict]:
        return self.storage.list_datasets(self.owner_id, see_all=self.see_all)

    def get_dataset(self, name_or_id: str | int) -> dict:
        dataset = self.storage.find_dataset(name_or_id, self.owner_id, see_all=self.see_all)
        if dataset is None:
            names = ", ".join(d["name"] for d in self.list_datasets()) or "none yet"
            raise NotFoundError(f"no dataset {name_or_id!r}; datasets: {names}")
        return dataset

    def dataset_items(self, name_or_id: str | int, split: str | None = None,
                      limit: int | None = 50, offset: int = 0) -> list[dict]:
        dataset = self.get_dataset(name_or_id)
        return self.storage.dataset_items(dataset["id"], split, limit, offset)

    def dataset_split_counts(self, name_or_id: str | int) -> dict[str, int]:
        return self.storage.count_items(self.get_dataset(name_or_id)["id"])

    def item_file(self, dataset: dict, item: dict) -> Path:
        """The audio file of an item (absolute path inside the data home)."""
        return self.storage.files.resolve(f"{dataset['path']}/{item['file']}")

    def import_dataset(self, path: str | Path, name: str, task: str | None = None, *,
                       skip_bad: bool = False, options: ImportOptions | None = None,
                       on_progress: Progress | None = None, shared: bool = False,
                       is_demo: bool = False, description: str = "") -> dict:
        """Check and import a folder, zip or table in one go (the command line and the demo).

        With problems that would skip items, nothing is imported unless ``skip_bad`` is set."""
        options = options or ImportOptions()
        if task is not None:
            options.task = task
        self._check_new_dataset_name(name)
        plan = self.check_import(path, options)
        try:
            if plan.report.blocking and not skip_bad:
                raise DatasetError("nothing was imported: " + "\n".join(plan.report.lines())
                                   + "\nfix these, or import again skipping the bad items (--skip-bad)")
            return self.commit_import(plan, name, on_progress=on_progress, shared=shared,
                                      is_demo=is_demo, description=description)
        finally:
            discard(plan)

    def save_upload(self, filename: str, stream: BinaryIO) -> Path:
        """Store an uploaded file under the staging folder (size-limited, safe name)."""
        return save_upload(self._staging() / staging_name("upload"), filename, stream,
                           ImportLimits())

    def check_import(self, path: str | Path, options: ImportOptions | None = None,
                     on_progress: Progress | None = None, name: str | None = None) -> ImportPlan:
        """Read and check a folder, zip or table: the plan holds the items and the report.
        ``name``: what to call the source in reports (an upload's own file name), rather than
        the path it was staged under."""
        clean_stale_staging(self._staging())
        source = Path(path).expanduser()
        # only a file save_upload made (staging/upload-*/file) is ours to clean up afterwards
        uploaded = (source.is_file() and not source.is_symlink() and source.parent.name.startswith("upload-")
                    and source.resolve().parent.parent == self._staging().resolve())
        if not uploaded:
            self.check_server_path(source)
        if not source.exists():
            raise DatasetError(f"{source} is not a folder or file on this machine; check the path")
        try:
            plan = prepare_import(source, self._staging(), options, ImportLimits(), on_progress)
        except BaseException:
            if uploaded:  # a failed check of an upload leaves nothing behind either
                shutil.rmtree(source.parent, ignore_errors=True)
            raise
        plan.upload = source.parent if uploaded else None
        plan.name = name or plan.name
        return plan

    def server_import_allowed(self) -> bool:
        """Whether this user may import from a path on the server at all: always with accounts
        off (one person on their own machine); with accounts on, an admin, and only when
        ``import_roots`` (LIM_IMPORT_ROOTS) names somewhere. Everybody may upload."""
        config = load_config()
        return not self._accounts_on(config) or (self.is_admin and bool(_import_roots(config)))

    def check_server_path(self, source: str | Path) -> Path:
        """The resolved path when this user may import from it; ``AuthError`` otherwise.

        The app's process can read every user's files, so a typed path is the one door to them
        that item scoping does not close (issue 27): never the data home or anything in it
        (symbolic links and ``..`` resolved first), and with accounts on only an admin, and
        only under the folders ``import_roots`` lists."""
        resolved = Path(source).expanduser().resolve()
        config = load_config()
        accounts = self._accounts_on(config)
        if resolved.is_relative_to(DEMO_ASSETS.resolve()):
            return resolved  # the demo sets the code ships (public, read-only)
        if accounts and not self.is_admin:  # said first: the answer tells nothing about the path
            raise AuthError("with accounts on, importing from a path on the server is for admins only; "
                            "upload a .zip, .csv, .jsonl or .parquet file instead")
        if resolved.is_relative_to(self.home.resolve()):
            raise AuthError(f"{source} is inside the workbench's data home; import from a folder of "
                            "your own, or export a dataset and upload the zip")
        if not accounts:
            return resolved  # one person on their own machine
        roots = _import_roots(config)
        if not any(resolved.is_relative_to(root) for root in roots):
            where = ", ".join(str(root) for root in roots) or "none: LIM_IMPORT_ROOTS is empty"
            raise AuthError(f"{source} is outside the folders admins may import from ({where}); "
                            "ask whoever runs the server to add it to LIM_IMPORT_ROOTS, or upload it")
        return resolved

    def commit_import(self, plan: ImportPlan, name: str, *, on_progress: Progress | None = None,
                      shared: bool = False, is_demo: bool = False, description: str = "") -> dict:
        """Write a checked plan (its good items) into the data home, all or nothing."""
        self._check_new_dataset_name(name)
        target = self.storage.files.new_dir("datasets", name)
        try:
            rows = write_dataset(plan, target, on_progress)
            dataset_id = self.storage.add_dataset({
                "name": name.strip(), "task": plan.columns.task,
                "path": self.storage.files.relative(target),
                "version": content_version(sorted(
                    (r["split"], r["file"], r["text"], r["label"], r["content_hash"]) for r in rows)),
                "splits": [s for s in SPLITS if any(r["split"] == s for r in rows)],
                "labels": sorted({r["label"] for r in rows if r["label"] is not None}),
                "shared": int(shared), "is_demo": int(is_demo), "description": description,
                "owner_id": self.owner_id, "report": plan.report.to_dict(),
            }, rows)
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)  # nothing half-imported remains
            raise
        discard(plan)
        return self.storage.find_dataset(dataset_id, self.owner_id)

    def recheck_import(self, plan: ImportPlan, options: ImportOptions,
                       on_progress: Progress | None = None) -> ImportPlan:
        """Check the same source again with other choices (task, columns, splits)."""
        again = prepare_import(plan.source, self._staging(), options, ImportLimits(), on_progress)
        again.staging, again.upload, again.name = plan.staging, plan.upload, plan.name  # as before
        return again

    def discard_import(self, plan: ImportPlan) -> None:
        discard(plan)

    def dataset_stats(self, name_or_id: str | int) -> dict:
        return dataset_stats(self.storage, self.get_dataset(name_or_id)["id"])

    def find_items(self, name_or_id: str | int, split: str | None = None, query: str = "",
                   label: str | None = None, limit: int = 25, offset: int = 0) -> tuple[list[dict], int]:
        """A page of items matching a search, and how many match in all."""
        return self.storage.search_items(self.get_dataset(name_or_id)["id"], split, query, label,
                                         limit, offset)

    def item_view(self, name_or_id: str | int, item_id: int) -> dict:
        """Waveform and log-mel spectrogram of one audio item."""
        dataset = self.get_dataset(name_or_id)
        item = self._item(dataset, item_id)
        if not item["file"]:
            raise DatasetError("this item has no audio")
        return audio_view(self.item_file(dataset, item))

    def update_item(self, name_or_id: str | int, item_id: int, *, text: str | None = None,
                    label: str | None = None) -> dict:
        """Change a transcript or label; the change is recorded and the dataset gets a new version."""
        dataset = self._own_dataset(name_or_id)
        item = self._item(dataset, item_id)
        fields = {key: value.strip() for key, value in (("text", text), ("label", label))
                  if value is not None and value.strip() != (item[key] or "")}
        if label is not None and dataset["task"] == "asr" or text is not None and dataset["task"] == "audio-classification":
            raise DatasetError(f"a {dataset['task']} dataset has no {'label' if label is not None else 'text'} to edit")
        if any(not value for value in fields.values()):
            raise DatasetError("a transcript or label cannot be empty; remove the item instead")
        if fields:
            self._change_item(dataset, item_id, "edit", fields)
        return self.get_dataset(dataset["id"])

    def remove_item(self, name_or_id: str | int, item_id: int) -> dict:
        """Remove a bad item (its audio file too); recorded, and the dataset gets a new version."""
        dataset = self._own_dataset(name_or_id)
        item = self._item(dataset, item_id)
        self._change_item(dataset, item_id, "remove", {})
        if item["file"]:
            self.storage.files.remove(f"{dataset['path']}/{item['file']}")
        return self.get_dataset(dataset["id"])

    def dataset_report_lines(self, name_or_id: str | int) -> list[str]:
        """The import report kept with a dataset, as text."""
        from engine.data.validation import report_from_dict

        report = self.get_dataset(name_or_id)["report"]
        return report_from_dict(report).lines() if report else ["(imported before reports were kept)"]

    def dataset_history(self, name_or_id: str | int) -> list[dict]:
        return self.storage.dataset_changes(self.get_dataset(name_or_id)["id"])

    def export_dataset(self, name_or_id: str | int, out_dir: str | Path | None = None) -> Path:
        """A zip in the audiofolder layout (text sets: <split>.csv) with every edit applied."""
        dataset = self.get_dataset(name_or_id)
        # kept per user: two users' sets of the same name never replace each other's download
        folder = Path(out_dir) if out_dir is not None else self._staging() / "exports" / str(self.owner_id)
        folder.mkdir(parents=True, exist_ok=True)
        if out_dir is None:  # one export per dataset is kept for download; older ones go
            for old in folder.glob(f"{safe_name(dataset['name'])}-{'[0-9a-f]' * 12}.zip"):
                old.unlink()
        out = folder / f"{safe_name(dataset['name'])}-{dataset['version']}.zip"
        return export_zip(self.storage.files.resolve(dataset["path"]), dataset["task"],
                          self.storage.dataset_items(dataset["id"]), out)

    def delete_dataset(self, name_or_id: str | int) -> None:
        """Delete a dataset's rows and files; runs keep their record (name and version)."""
        dataset = self._own_dataset(name_or_id, doing="deleted")
        self.storage.delete_dataset(dataset["id"], self.owner_id)
        self.storage.files.remove(dataset["path"])

    def _own_dataset(self, name_or_id: str | int, doing: str = "changed") -> dict:
        dataset = self.get_dataset(name_or_id)
        if dataset["owner_id"] != self.owner_id:
            whose = "is shared with you read-only" if dataset["shared"] else "is another user's"
            raise DatasetError(f"{dataset['name']} {whose}; it cannot be {doing}")
        if dataset["is_demo"] and doing == "changed":
            raise DatasetError(f"{dataset['name']} is a read-only demo set; export it and import the "
                               "zip under a new name to edit a copy")
        return dataset

    def _item(self, dataset: dict, item_id: int) -> dict:
        item = self.storage.get_item(dataset["id"], int(item_id))
        if item is None:
            raise NotFoundError(f"{dataset['name']} has no item {item_id} (it may have been removed)")
        return item

    def _change_item(self, dataset: dict, item_id: int, action: str, fields: dict) -> None:
        from engine.data.export import write_metadata

        version = version_after_change(self.storage.item_fingerprints(dataset["id"]), item_id, action, fields)
        self.storage.change_item(dataset["id"], item_id, action, fields, version)
        write_metadata(self.storage.files.resolve(dataset["path"]), dataset["task"],
                       self.storage.dataset_items(dataset["id"]))

    def _check_new_dataset_name(self, name: str) -> None:
        check_name(name, "dataset")  # no control characters, terminal escapes or non-UTF-8 bytes
        if self.storage.find_dataset(name.strip(), self.owner_id) is not None:
            raise DatasetError(f"a dataset named {name.strip()!r} already exists; choose another name")

    def _accounts_on(self, config) -> bool:
        """Accounts are on (LIM_AUTH=on), or this view acts as an account whatever the setting."""
        return config.auth == "on" or (self.user is not None and self.owner_id != LOCAL_USER_ID)

    def _staging(self) -> Path:
        return self.home / "staging"
