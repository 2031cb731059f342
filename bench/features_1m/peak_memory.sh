#!/bin/bash
# runs the command, sampling the process's anonymous and file-backed resident memory every 0.2 s
"$@" &
pid=$!
peak_anon=0; peak_file=0
while kill -0 $pid 2>/dev/null; do
  a=$(awk '/RssAnon/{print $2}' /proc/$pid/status 2>/dev/null); f=$(awk '/RssFile/{print $2}' /proc/$pid/status 2>/dev/null)
  [ -n "$a" ] && [ "$a" -gt "$peak_anon" ] && peak_anon=$a
  [ -n "$f" ] && [ "$f" -gt "$peak_file" ] && peak_file=$f
  sleep 0.2
done
wait $pid; rc=$?
echo "peak RssAnon ${peak_anon} kB, peak RssFile ${peak_file} kB, rc $rc"
