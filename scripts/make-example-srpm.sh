#!/bin/sh
# Regenerate files/srpms/kiln-hello-1.0-1.src.rpm from files/rpm/kiln-hello (needs rpmbuild).
# The archive and SRPM use fixed mtimes so that the output is the same on every run.
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/SOURCES" "$work/kiln-hello-1.0"
cp "$top"/files/rpm/kiln-hello/src/* "$work/kiln-hello-1.0/"
tar --sort=name --mtime=@1700000000 --owner=0 --group=0 --numeric-owner \
    -C "$work" -czf "$work/SOURCES/kiln-hello-1.0.tar.gz" kiln-hello-1.0
SOURCE_DATE_EPOCH=1700000000 rpmbuild -bs --define "_topdir $work" --define "dist %{nil}" \
    --define "use_source_date_epoch_as_buildtime 1" --define "_buildhost kiln" \
    --define "_sourcedir $work/SOURCES" --define "_srcrpmdir $top/files/srpms" \
    "$top/files/rpm/kiln-hello/kiln-hello.spec"
