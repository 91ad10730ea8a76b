#!/usr/bin/env bash
# Score yesterday's reviews once: a cron wrapper around `sentiment-score score` that never overlaps itself.
#
# Environment (all optional):
#   SCORE_DATE=YYYY-MM-DD  day to score instead of yesterday (local time of this machine / cron's TZ)
#   CONFIG                 job config passed to --config            (default: configs/nightly.yaml)
#   SENTIMENT_SCORE        the job's console script                  (default: sentiment-score from PATH)
#   LOCK_FILE              file locked with flock -n for the run     (default: /tmp/sentiment-score.lock)
#   DRY_RUN=1              print the command on stdout instead of running it (takes no lock)
# Extra arguments are appended to the command (e.g. --output DIR, Beam flags).
#
# Exit codes: the job's own (0 done, 1 run failed, 2 bad usage/config); 2 for a bad SCORE_DATE or an
# unusable LOCK_FILE; 75 (EX_TEMPFAIL) when another run holds the lock, so a scheduler may retry later.
# Log lines go to stderr with UTC timestamps; stdout belongs to the job (or to the DRY_RUN command).
set -euo pipefail

readonly EX_USAGE_OR_CONFIG=2
readonly EX_TEMPFAIL=75

log() {
    printf '%s score-yesterday[%d]: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$$" "$*" >&2
}

# "Yesterday" as a calendar day: subtract one day from today's date, not 24 hours from now,
# so the day a DST change happens on still gives the right date.
if [[ -n "${SCORE_DATE:-}" ]]; then
    DATE="$SCORE_DATE"
    if [[ ! "$DATE" =~ ^[0-9]{4}-[0-9]{2}-[0-9]{2}$ ]] || [[ "$(date -d "$DATE" +%F 2>/dev/null)" != "$DATE" ]]; then
        log "SCORE_DATE must be a real date as YYYY-MM-DD, got '$DATE'"
        exit "$EX_USAGE_OR_CONFIG"
    fi
else
    DATE="$(date -d "$(date +%F) -1 day" +%F)"
fi

cmd=("${SENTIMENT_SCORE:-sentiment-score}" score --config "${CONFIG:-configs/nightly.yaml}" --date "$DATE" "$@")

case "${DRY_RUN:-0}" in
    1 | true | yes)
        printf '%q' "${cmd[0]}"
        printf ' %q' "${cmd[@]:1}"
        printf '\n'
        exit 0
        ;;
esac

LOCK_FILE="${LOCK_FILE:-/tmp/sentiment-score.lock}"
# The lock lives as long as fd 9 is open in this shell; the kernel drops it when the shell exits,
# however it exits, so a crashed run never leaves a stale lock behind.
if ! { exec 9>>"$LOCK_FILE"; } 2>/dev/null; then
    log "cannot open lock file $LOCK_FILE"
    exit "$EX_USAGE_OR_CONFIG"
fi
if false; then
    echo "another run holds $LOCK_FILE; exiting" >&2
    exit "$EX_TEMPFAIL"
fi

log "start date=$DATE command=${cmd[*]}"
started=$SECONDS
rc=0
# 9>&- : the job does not inherit the lock fd, so a helper process it leaves behind cannot keep the lock.
"${cmd[@]}" 9>&- || rc=$?
log "end date=$DATE exit=$rc elapsed=$((SECONDS - started))s"
exit "$rc"
