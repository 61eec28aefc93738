"""Replay a Dockerfile's steps on this machine, without a container engine.

Guarantee: every step runs in order with the permissions it would have in the image, so a step
that writes where its user could not fails here as it fails in ``docker build``. Each stage
gets its own root directory under ``base``; the image paths the Dockerfile names (its WORKDIRs,
absolute COPY destinations, the users' homes) are rewritten into that root. RUN steps run with
/bin/sh as root until a USER step and as that user's uid after it (``setpriv``, which needs
root). A stage's root is closed to other users when the next stage starts: the final image
cannot see an earlier stage, so nothing the runtime user runs may lean on one.

What the base images provide (Python, uv, the shell) comes from this machine, through the
environment the caller passes. The step that creates a user (``useradd``/``adduser``) is
replayed by its effect: a home directory owned by the uid it names, and ``chown NAME``
in later steps meaning that uid. Supported: ARG, FROM, ENV, WORKDIR, COPY (context or
``--from``, ``--chown``, .dockerignore), RUN, USER, CMD; EXPOSE and LABEL are metadata.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path


class ReplayError(Exception):
    """The Dockerfile uses something the replay cannot reproduce, or a step failed."""


class StepFailed(ReplayError):
    """A RUN step exited non-zero; ``output`` holds what it printed."""

    def __init__(self, message: str, output: str) -> None:
        super().__init__(message)
        self.output = output


@dataclass(frozen=True)
class Instruction:
    line: int
    keyword: str
    args: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.keyword} {self.args}"


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int
    home: str  # the path in the image


ROOT = User("root", 0, 0, "/root")


@dataclass
class Stage:
    name: str
    root: Path
    env: dict[str, str]
    args: dict[str, str] = field(default_factory=dict)
    workdir: str = "/"
    user: User = ROOT
    users: dict[str, User] = field(default_factory=lambda: {"root": ROOT})
    cmd: list[str] | None = None
    outputs: list[tuple[Instruction, str]] = field(default_factory=list)

    def host(self, image_path: str) -> Path:
        """Where an absolute image path lives on this machine."""
        return self.root / image_path.lstrip("/")

    @property
    def cwd(self) -> Path:
        return self.host(self.workdir)


def parse(text: str) -> list[Instruction]:
    """Split a Dockerfile into instructions (continuations joined, comments dropped)."""
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction is dropped
        if not pending:
            start = number
        if line.endswith("\\"):
            pending.append(line[:-1].strip())
            continue
        pending.append(line)
        keyword, _, args = " ".join(p for p in pending if p).partition(" ")
        instructions.append(Instruction(start, keyword.upper(), args.strip()))
        pending = []
    if pending:
        raise ReplayError(f"line {start}: the last instruction ends with a continuation")
    return instructions


_VAR = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


def expand(text: str, values: dict[str, str]) -> str:
    """Substitute ``$NAME`` and ``${NAME}`` as Docker does in instruction arguments."""
    return _VAR.sub(lambda m: values.get(m.group(1) or m.group(2), ""), text)


def _split_flags(args: str) -> tuple[dict[str, str], list[str]]:
    flags: dict[str, str] = {}
    words = shlex.split(args)
    while words and words[0].startswith("--"):
        key, _, value = words.pop(0)[2:].partition("=")
        flags[key] = value
    return flags, words


def _exec_form(args: str) -> list[str] | None:
    """The JSON list of an exec-form RUN or CMD; None for the shell form (as Docker decides)."""
    try:
        parsed = json.loads(args)
    except ValueError:
        return None
    if isinstance(parsed, list) and all(isinstance(a, str) for a in parsed):
        return parsed
    return None


class DockerIgnore:
    """The build context's .dockerignore: patterns from its root, the last match wins."""

    def __init__(self, context: Path) -> None:
        path = context / ".dockerignore"
        lines = path.read_text().splitlines() if path.exists() else []
        self.rules: list[tuple[bool, re.Pattern[str]]] = []
        for line in (raw.strip() for raw in lines):
            if not line or line.startswith("#"):
                continue
            include = line.startswith("!")
            pattern = line.lstrip("!").strip("/")
            self.rules.append((include, re.compile(self._translate(pattern))))

    @staticmethod
    def _translate(pattern: str) -> str:
        """Docker's (Go's filepath.Match) pattern as a regex: only `**` crosses `/`."""
        out = []
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out.append(r"(?:.*/)?")
                i += 3
            elif pattern.startswith("**", i):
                out.append(r".*")
                i += 2
            elif pattern[i] == "*":
                out.append(r"[^/]*")
                i += 1
            elif pattern[i] == "?":
                out.append(r"[^/]")
                i += 1
            elif pattern[i] == "[" and "]" in pattern[i + 1 :]:
                end = pattern.index("]", i + 1)
                body = pattern[i + 1 : end]
                out.append("[" + ("^" + body[1:] if body.startswith(("!", "^")) else body) + "]")
                i = end + 1
            else:
                out.append(re.escape(pattern[i]))
                i += 1
        return "".join(out)

    def excluded(self, rel: str) -> bool:
        """Whether ``rel`` (a path relative to the context) stays out of the build."""
        pieces = rel.split("/")
        prefixes = ["/".join(pieces[: i + 1]) for i in range(len(pieces))]
        verdict = False
        for include, rule in self.rules:
            if any(rule.fullmatch(p) for p in prefixes):
                verdict = not include
        return verdict


_USER_FLAGS_WITH_VALUE = {
    "-u": "uid", "--uid": "uid", "-d": "home", "--home-dir": "home", "--home": "home",
    "-g": "gid", "--gid": "gid", "-s": "shell", "--shell": "shell", "-c": "comment",
    "--comment": "comment", "--gecos": "comment",
}  # fmt: skip
_USER_FLAGS = {
    "-m", "--create-home", "-U", "--user-group", "-l", "--no-log-init", "-r", "--system",
    "--disabled-password", "--disabled-login",
}  # fmt: skip


class Replay:
    """Replay ``dockerfile`` with ``context`` as the build context, stages under ``base``.

    ``env`` stands for the base images' environment (PATH to this machine's Python and uv,
    HOME for root's caches, anything else the tools need). ``base`` must be traversable by
    every user the Dockerfile switches to.
    """

    def __init__(
        self,
        dockerfile: Path,
        context: Path,
        base: Path,
        env: dict[str, str],
        timeout: float = 900,
    ) -> None:
        self.instructions = parse(dockerfile.read_text())
        self.context = context
        self.ignore = DockerIgnore(context)
        self.base = base
        self.base_env = dict(env)
        self.timeout = timeout
        self.global_args: dict[str, str] = {}
        self.stages: dict[str, Stage] = {}
        self.image_tops = self._image_tops()

    def _image_tops(self) -> set[str]:
        """The top directories of the image paths the Dockerfile names: rewritten per stage."""
        tops = {"home"}
        for ins in self.instructions:
            if ins.keyword == "WORKDIR":
                paths = [ins.args]
            elif ins.keyword == "COPY":
                paths = _split_flags(ins.args)[1][-1:]
            else:
                continue
            for path in paths:
                if path.startswith("/") and path.strip("/"):
                    tops.add(path.strip("/").split("/")[0])
        return tops

    def rewrite(self, stage: Stage, text: str) -> str:
        """Point the image paths in ``text`` into the stage's root."""
        tops = "|".join(re.escape(t) for t in sorted(self.image_tops))
        return re.sub(rf"(?<![\w./~$-])/(?:{tops})\b", lambda m: str(stage.root) + m[0], text)

    def run(self) -> Stage:
        """Replay every step; return the final stage (the image)."""
        stage: Stage | None = None
        for ins in self.instructions:
            if ins.keyword == "FROM":
                stage = self._from(ins, stage)
            elif ins.keyword == "ARG":
                self._arg(ins, stage)
            elif stage is None:
                raise ReplayError(f"{ins}: only ARG may come before the first FROM")
            elif ins.keyword in ("EXPOSE", "LABEL"):
                continue
            else:
                handler = getattr(self, f"_{ins.keyword.lower()}", None)
                if handler is None or ins.keyword not in _STEP_KEYWORDS:
                    raise ReplayError(f"{ins}: the replay does not support {ins.keyword}")
                handler(ins, stage)
        if stage is None:
            raise ReplayError("the Dockerfile has no FROM")
        return stage

    # --- instructions -------------------------------------------------------------------

    def _from(self, ins: Instruction, previous: Stage | None) -> Stage:
        words = expand(ins.args, self.global_args).split()
        name = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(len(self.stages))
        if len(words) not in (1, 3):
            raise ReplayError(f"{ins}: expected FROM IMAGE [AS NAME]")
        if previous is not None:
            previous.root.chmod(0o700)  # later stages see it only through COPY --from
        root = self.base / f"{len(self.stages)}-{name}"
        root.mkdir(mode=0o755)
        root.chmod(0o755)
        stage = Stage(name=name, root=root, env=dict(self.base_env))
        self.stages[name] = stage
        return stage

    def _arg(self, ins: Instruction, stage: Stage | None) -> None:
        name, has_default, default = ins.args.partition("=")
        if stage is None:
            self.global_args[name] = default
            return
        value = expand(default, {**stage.args, **stage.env}) if has_default else None
        stage.args[name] = value if value is not None else self.global_args.get(name, "")

    def _env(self, ins: Instruction, stage: Stage) -> None:
        for word in shlex.split(ins.args):
            key, sep, value = word.partition("=")
            if not sep:
                raise ReplayError(f"{ins}: use the ENV KEY=VALUE form")
            # image paths first: an expanded value (the base PATH) holds this machine's paths
            stage.env[key] = expand(self.rewrite(stage, value), {**stage.args, **stage.env})

    def _workdir(self, ins: Instruction, stage: Stage) -> None:
        path = expand(ins.args, {**stage.args, **stage.env})
        stage.workdir = os.path.normpath(os.path.join(stage.workdir, path))
        self._mkdirs(stage.cwd, stage.user.uid, stage.user.gid)

    def _user(self, ins: Instruction, stage: Stage) -> None:
        spec = expand(ins.args, {**stage.args, **stage.env})
        stage.user = self._resolve_user(ins, stage, spec)

    def _cmd(self, ins: Instruction, stage: Stage) -> None:
        stage.cmd = _exec_form(ins.args) or ["/bin/sh", "-c", ins.args]

    def _copy(self, ins: Instruction, stage: Stage) -> None:
        values = {**stage.args, **stage.env}
        flags, words = _split_flags(expand(ins.args, values))
        unknown = set(flags) - {"from", "chown", "link"}
        if unknown or len(words) < 2:
            raise ReplayError(f"{ins}: the replay supports COPY [--from] [--chown] SRC... DEST")
        *sources, dest = words
        owner = self._resolve_user(ins, stage, flags["chown"]) if "chown" in flags else None
        dest_path = os.path.normpath(os.path.join(stage.workdir, dest))
        target = stage.host(dest_path)
        into_dir = dest.endswith("/") or len(sources) > 1 or target.is_dir()
        copied = 0
        if "from" in flags:
            source_stage = self.stages.get(flags["from"])
            if source_stage is None:
                raise ReplayError(f"{ins}: no earlier stage is named {flags['from']!r}")
            for src in sources:
                copied += self._copy_path(source_stage.host(src), target, into_dir, owner, None)
        else:
            for src in sources:
                if not _has_glob(src) and not (self.context / src).exists():
                    raise ReplayError(f"{ins}: {src} is not in the build context")
                matches = sorted(self.context.glob(src)) if _has_glob(src) else [self.context / src]
                for match in matches:
                    if not self.ignore.excluded(_rel(match, self.context)):
                        copied += self._copy_path(match, target, into_dir, owner, self.context)
        if copied == 0:
            raise ReplayError(f"{ins}: no source file to copy (missing or in .dockerignore)")

    def _run(self, ins: Instruction, stage: Stage) -> None:
        argv = _exec_form(ins.args)
        if argv is None and re.match(r"(useradd|adduser)\s", ins.args):
            self._create_user(ins, stage)
            return
        if argv is None:
            argv = ["/bin/sh", "-c", self._chown_names(stage, self.rewrite(stage, ins.args))]
        else:
            argv = [self.rewrite(stage, a) for a in argv]
        proc = self.execute(stage, argv)
        stage.outputs.append((ins, proc.stdout))
        if proc.returncode != 0:
            tail = proc.stdout.strip().splitlines()[-1:] or ["(no output)"]
            raise StepFailed(f"{ins} exited {proc.returncode}: {tail[0]}", proc.stdout)

    # --- running ------------------------------------------------------------------------

    def execute(
        self, stage: Stage, argv: list[str], timeout: float | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in the stage's working directory, as its current user, with its env."""
        env = {**stage.args, **stage.env}
        user = stage.user
        if user.uid != 0:
            env["HOME"] = str(stage.host(user.home))
            if os.geteuid() != 0:
                raise ReplayError(f"switching to uid {user.uid} needs the replay to run as root")
            argv = [
                "setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--clear-groups", *argv,
            ]  # fmt: skip
        return subprocess.run(
            argv,
            cwd=stage.cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout or self.timeout,
        )

    # --- users and files ----------------------------------------------------------------

    def _create_user(self, ins: Instruction, stage: Stage) -> None:
        if re.search(r"[;&|`]|\$\(", ins.args):
            raise ReplayError(f"{ins}: a RUN that creates a user must do only that")
        words = shlex.split(expand(ins.args, {**stage.args, **stage.env}))[1:]
        options: dict[str, str] = {}
        positional = []
        while words:
            word = words.pop(0)
            key, sep, inline = word.partition("=")
            if key in _USER_FLAGS_WITH_VALUE:
                options[_USER_FLAGS_WITH_VALUE[key]] = inline if sep else words.pop(0)
            elif word in _USER_FLAGS:
                continue
            elif word.startswith("-"):
                raise ReplayError(f"{ins}: the replay does not know the option {word}")
            else:
                positional.append(word)
        if len(positional) != 1 or "uid" not in options:
            raise ReplayError(f"{ins}: name one user and give its uid (--uid)")
        name = positional[0]
        uid = int(options["uid"])
        user = User(name, uid, int(options.get("gid", uid)), options.get("home", f"/home/{name}"))
        stage.users[name] = user
        home = stage.host(user.home)
        self._mkdirs(home.parent, 0, 0)
        self._mkdirs(home, user.uid, user.gid)

    def _resolve_user(self, ins: Instruction, stage: Stage, spec: str) -> User:
        name, _, group = spec.partition(":")
        if name.isdigit():
            uid = int(name)
            user = next((u for u in stage.users.values() if u.uid == uid), None)
            user = user or User(name, uid, uid, "/")
        elif name in stage.users:
            user = stage.users[name]
        else:
            raise ReplayError(f"{ins}: no user {name!r} was created in this stage")
        if group:
            gid = int(group) if group.isdigit() else self._resolve_user(ins, stage, group).gid
            user = User(user.name, user.uid, gid, user.home)
        return user

    def _chown_names(self, stage: Stage, command: str) -> str:
        """``chown NAME[:GROUP]`` with the uid and gid the replay gave those names."""

        def numeric(m: re.Match[str]) -> str:
            user = stage.users.get(m["user"])
            group = stage.users.get(m["group"] or "")
            uid = str(user.uid) if user else m["user"]
            gid = str(group.gid) if group else (m["group"] or "")
            return f"{m['head']}{uid}" + (f":{gid}" if m["group"] else "")

        pattern = r"(?P<head>\bchown\s+(?:-\S+\s+)*)(?P<user>[\w.-]+)(?::(?P<group>[\w.-]+))?"
        return re.sub(pattern, numeric, command)

    def _mkdirs(self, path: Path, uid: int, gid: int) -> None:
        missing = []
        while not path.exists():
            missing.append(path)
            path = path.parent
        for directory in reversed(missing):
            directory.mkdir(mode=0o755)
            _own(directory, uid, gid)

    def _copy_path(
        self, src: Path, target: Path, into_dir: bool, owner: User | None, context: Path | None
    ) -> int:
        """Copy a file, or a directory's contents, to ``target``; return the files copied."""
        uid_gid = (owner.uid, owner.gid) if owner else None
        if src.is_dir() and not src.is_symlink():
            self._mkdirs(target, *(uid_gid or (0, 0)))
            count = 0
            for child in sorted(src.iterdir()):
                if context is not None and self.ignore.excluded(_rel(child, context)):
                    continue
                count += self._copy_path(child, target / child.name, False, owner, context)
            return count
        if into_dir:
            self._mkdirs(target, *(uid_gid or (0, 0)))
            target = target / src.name
        self._mkdirs(target.parent, *(uid_gid or (0, 0)))
        if target.is_symlink() or target.exists():
            target.unlink()  # a later COPY replaces the file
        if src.is_symlink():
            target.symlink_to(os.readlink(src))
        else:
            shutil.copy2(src, target)
        st = src.lstat()
        if uid_gid:
            _own(target, *uid_gid)
        elif context is None:
            _own(target, st.st_uid, st.st_gid)  # COPY --from keeps the owner
        else:
            _own(target, 0, 0)
        return 1


_STEP_KEYWORDS = {"ENV", "WORKDIR", "USER", "CMD", "COPY", "RUN"}


def _has_glob(path: str) -> bool:
    return any(c in path for c in "*?[")


def _rel(path: Path, context: Path) -> str:
    return path.relative_to(context).as_posix()


def _own(path: Path, uid: int, gid: int) -> None:
    if os.geteuid() == 0:
        os.chown(path, uid, gid, follow_symlinks=False)
