echo "@MARK@ $$"; d=@CHANNEL@ g=
if command -v setsid >/dev/null 2>&1; then g=setsid; fi
while [ -p "$d/ctl" ]; do
  IFS= read -r t < "$d/ctl" || continue
  case $t in "" | *[!0-9a-f]*) continue;; esac
  c=$d/$t
  (exec 9> "$c.rc" < "$c.in" 3> "$c.out" 2> "$c.err" 7< "$c.stop" 8> "$c.ack"
   echo "started${g:+ group}" >&9
   p=$(p=; read -r p _ 2>/dev/null < /proc/self/stat; echo "$p"
     if [ -n "$g" ] && [ -n "$p" ]; then
       (while IFS= read -r s; do case $s in TERM | KILL)
          kill -"$s" -"$p" 2>/dev/null; echo "$s" >&8;; esac; done
       ) <&7 > /dev/null 2>&1 3>&- 7<&- 9>&- &
     fi
     exec >&3 3>&- 7<&- 8>&- 9>&-; @STAGE_SHELL@); rc=$?
   if [ -n "$g" ] && [ -n "$p" ]; then kill -KILL -"$p" 2>/dev/null; fi
   echo $rc >&9)
done
read -r _
