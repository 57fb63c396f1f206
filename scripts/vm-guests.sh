#!/usr/bin/env bash
# Names the stagehand guests (QEMU started with -name stagehand-vm) still
# running, before make qemu-test, demo or bench starts its own: each keeps a
# host core busy and holds a guest slot (qemu-tests/vm), so everything after
# it runs slower or waits. It only names them; it ends nothing.
set -uo pipefail
found=0
while read -r pid etimes args; do
	case " $args " in
	*" -name stagehand-vm"*) ;;
	*) continue ;;
	esac
	if ((!found)); then
		echo "vm-guests: stagehand guests still running (they slow this run, or make it wait for a guest slot):" >&2
		found=1
	fi
	printf 'vm-guests:   pid %s, up %dm%02ds, parent %s: %.160s\n' "$pid" $((etimes / 60)) $((etimes % 60)) \
		"$(ps -o ppid= -p "$pid" | tr -d ' ')" "$args" >&2
done < <(ps -eo pid=,etimes=,args= | grep -F 'qemu-system' | grep -v grep)
if ((found)); then
	echo "vm-guests: if they are yours and no run of yours is using them, end them with 'kill PID'" >&2
fi
exit 0
