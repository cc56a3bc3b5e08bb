"""How an image folder is laid out: FOLDER/<class>/<image>, or split folders (train, val, test, and their
usual aliases) each holding <class>/<image>. A layout that could be read two ways is refused, never guessed,
and no symbolic link that leads outside the folder is followed, at any level."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

from cnnkit.core.errors import CnnkitError
from cnnkit.core.progress import say
from cnnkit.data.images import is_image_file

SPLIT_ALIASES = {"train": ("train", "training"), "val": ("val", "valid", "validation"), "test": ("test", "testing")}


def scan_folder(root: Path, listed: bool = True) -> dict[str, list[tuple[str, str]]]:
    """Image files per part ('train', 'val', 'test', or 'all' without split folders) as (path, class name);
    hidden files and non-image files are ignored, and (when `listed`) the links and non-files left out said."""
    if not root.exists():
        raise CnnkitError(
            f"data folder {root} does not exist; give a folder of class sub-folders, "
            "or a named data set (digits, mnist, fashion-mnist, cifar10, cifar100)"
        )
    if not root.is_dir():
        raise CnnkitError(f"--data {root} is a file; give a folder that holds one sub-folder of images per class")
    real_root, outside, irregular, hidden = os.path.realpath(root), list[str](), list[str](), list[str]()
    try:
        parts = split_folders(root, real_root, outside)
        hidden += [path for folder in parts.values() for path in _hidden_class_folders(folder)]
        files = {part: _class_images(folder, real_root, (outside, irregular)) for part, folder in parts.items()}
    finally:  # said even when the layout is refused: a link left out may be why
        if hidden and listed:
            say(
                f"ignored {len(hidden)} folder(s) of images whose names start with a dot, as hidden folders are, "
                f"e.g. {hidden[0]}: rename them to train on them as classes"
            )
        if outside and listed:
            say(f"ignored {len(outside)} symbolic link(s) that lead outside {real_root}, e.g. {outside[0]}")
        if irregular and listed:
            say(
                f"ignored {len(irregular)} image name(s) that are not regular files (a pipe, a device, a broken "
                f"link), e.g. {irregular[0]}"
            )
    training = "train" if "train" in parts else "all"
    classes = sorted({c for _, c in files[training]})
    if len(classes) < 2:
        raise CnnkitError(
            f"{parts[training]} holds images of {len(classes)} class(es), and a classifier needs at least two: "
            "put each class's images in its own sub-folder, e.g. FOLDER/cat/1.jpg, FOLDER/dog/2.jpg"
        )
    for part, items in files.items():
        unknown = sorted({c for _, c in items} - set(classes))
        if unknown:
            raise CnnkitError(f"{parts[part]} has classes that the training images lack: {', '.join(unknown)}")
    return files


def split_folders(root: Path, real_root: str, outside: list[str]) -> dict[str, Path]:
    """{'train': ..., 'val': ..., 'test': ...} for the split folders present, or {'all': root} for none."""
    links_out: list[str] = []
    folders = _sub_folders(root, real_root, links_out)
    splits = {folder: split for folder in folders if (split := _split_of(folder.name))}
    if not splits:
        return {"all": root}  # the top level is the class level, whose links are counted with the images
    outside += links_out
    others = [folder.name for folder in folders if folder not in splits]
    if others:
        raise CnnkitError(
            f"{root} mixes split folders ({', '.join(f.name for f in splits)}) with other folders "
            f"({', '.join(others)}): put every class inside the split folders (e.g. {root}/train/<class>/), "
            "or rename a class folder that is named like a split"
        )
    found: dict[str, Path] = {}
    for folder, split in splits.items():
        if split in found:
            raise CnnkitError(
                f"{root} has two folders for the {split} split ({found[split].name}, {folder.name}); keep one"
            )
        found[split] = folder
    if "train" not in found:
        raise CnnkitError(
            f"{root} has {', '.join(f.name for f in found.values())} but no train folder: add train/<class>/..., "
            "or lay the folder out as FOLDER/<class>/<image> and cnnkit holds out the test images itself"
        )
    return found if len(found) > 1 else {"all": found["train"]}


def _split_of(name: str) -> str | None:
    return next((split for split, aliases in SPLIT_ALIASES.items() if name.lower() in aliases), None)


def _hidden_class_folders(folder: Path) -> list[str]:
    """Hidden sub-folders (a name starting with a dot: '..a', '...') that hold image files themselves: left
    out, and said, since one may be a class named by mistake (a '.thumbnails' cache is said too; a '.git' not)."""
    with os.scandir(folder) as listing:
        hidden = sorted(e.path for e in listing if e.name.startswith(".") and _is_folder(e) and not e.is_symlink())
    return [path for path in hidden if _holds_images(path)]


def _holds_images(folder: str) -> bool:
    try:
        with os.scandir(folder) as listing:
            return any(is_image_file(entry.name) for entry in listing)
    except OSError:  # a folder that cannot be read holds nothing cnnkit could train on
        return False


def _sub_folders(folder: Path, real_root: str, outside: list[str]) -> list[Path]:
    """The visible sub-folders, without links that lead outside the data folder (those go to `outside`)."""
    folders = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    outside += [str(d) for d in folders if not _inside(str(d), real_root)]
    return [d for d in folders if _inside(str(d), real_root)]


def _class_images(folder: Path, root: str, ignored: tuple[list[str], list[str]]) -> list[tuple[str, str]]:
    """(path, class) of every regular image file under folder/<class>/, without following links that leave
    `root`; what is left out goes to `ignored` (links out, other special files)."""
    outside, irregular = ignored
    items = []  # plain strings: building 60,000 Path objects costs more than the whole cached load
    for class_dir in _sub_folders(folder, root, outside):
        for entry in _files(str(class_dir)):
            if not is_image_file(entry.name):
                continue
            if not _inside(entry, root):
                outside.append(entry.path)
            elif _regular(entry):
                items.append((entry.path, class_dir.name))
            else:
                irregular.append(entry.path)
    return items


def _files(top: str) -> Iterator[os.DirEntry]:
    """The files under `top` in os.walk's order (each folder's files by name, then its visible sub-folders by
    name), without entering linked folders. Entries, not names: the listing already says which are links and
    which regular files, where a stat of each of 60,000 files costs most of a cached load's scan."""
    with os.scandir(top) as listing:
        entries = sorted(listing, key=lambda entry: entry.name)
    files: list[os.DirEntry] = []
    folders: list[os.DirEntry] = []
    for entry in entries:
        (folders if _is_folder(entry) else files).append(entry)
    yield from files
    for entry in folders:
        if not entry.name.startswith(".") and not entry.is_symlink():
            yield from _files(entry.path)


def _is_folder(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:  # a link into a folder that cannot be read
        return False


def _regular(entry: os.DirEntry) -> bool:
    """A regular file, checked before it is ever opened: opening a FIFO would wait forever."""
    try:
        return entry.is_file(follow_symlinks=False) or (entry.is_symlink() and stat.S_ISREG(os.stat(entry).st_mode))
    except OSError:  # a broken link, or a file that went away
        return False


def _inside(entry: os.DirEntry | str, root: str) -> bool:
    """Whether a path stays inside the data folder; only links can lead out, so only they are resolved."""
    link = entry.is_symlink() if isinstance(entry, os.DirEntry) else os.path.islink(entry)
    return not link or os.path.realpath(entry).startswith(root + os.sep)
