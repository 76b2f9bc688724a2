#!/usr/bin/env bash
# A checkout that goes on training a study on the code its runs were trained with.
#
#   scripts/study_checkout.sh COMMIT EXPERIMENT_DIR WORKTREE
#   cd WORKTREE && PYTHONPATH=. python study.py --experiment_dir=EXPERIMENT_DIR ...
#
# One study holds runs of one code version (transformer/provenance.py), and study.py refuses
# to train more of a study once the training code has moved on. This makes a git worktree at
# COMMIT (any commit whose training code trained the runs) with this checkout's reporting
# code (provenance.REPORTING_CODE, and study.py: they change no number a run computes, and
# carry fixes such as skipping the finished runs of a fresh clone), points its
# EXPERIMENT_DIR at this checkout's (so finished runs are committed here), and checks that
# its code version is one the finished runs recorded. Run it from the repository's root,
# with the project's Python active.
set -euo pipefail
if [[ $# -ne 3 ]]; then
  echo "usage: $0 COMMIT EXPERIMENT_DIR WORKTREE" >&2
  exit 2
fi
commit=$1 experiment=${2%/} tree=$3
[[ -d $experiment ]] || { echo "$0: no folder $experiment" >&2; exit 2; }
[[ $experiment != /* ]] || { echo "$0: give EXPERIMENT_DIR relative to the repository" >&2; exit 2; }

# Each code version the finished runs recorded, with its count (a pilot may be older).
recorded=$(python -c '
import collections, glob, json, sys
versions = collections.Counter(
    json.load(open(path)).get("code_version")
    for path in glob.glob(f"{sys.argv[1]}/**/*_result.json", recursive=True))
print(" ".join(f"{version}:{count}" for version, count in versions.most_common()))
' "$experiment")

git worktree add --detach "$tree" "$commit"
reporting=$(python -c "from transformer import provenance; print(' '.join(provenance.REPORTING_CODE))")
for file in $reporting study.py; do
  cp "$file" "$tree/$file"
done
rm -rf "${tree:?}/$experiment"
ln -s "$PWD/$experiment" "$tree/$experiment"

version=$(cd "$tree" && PYTHONPATH=. python -c \
  "from transformer import provenance; print(provenance.code_version())")
runs=$(tr ' ' '\n' <<<"$recorded" | sed -n "s/^$version://p")
if [[ -z $runs ]]; then
  echo "$0: $tree is $version; the finished runs of $experiment are ${recorded:-none}" \
       "(version:runs). Its training code (or the libraries) differ: remove it" \
       "(git worktree remove --force $tree) and give another commit." >&2
  exit 1
fi
echo "$tree trains $experiment on $version, the code of $runs of its finished runs" \
     "(all: $recorded). Run study.py there with PYTHONPATH=.; commit finished runs here."
