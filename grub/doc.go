// Package grub renders the fixed, stagehand-owned grub.cfg that picks slot a
// or b from grubenv, with boot counting, on Debian's stock GRUB 2.06.
//
// # Where it runs
//
// grub.cfg and grubenv (Config.Env) lie side by side on the boot file system:
// the ESP's FAT on UEFI, a small FAT or ext2 boot partition on BIOS. GRUB's
// $root must name that file system when the script runs (the core image's
// prefix, or a stub that sets root and runs configfile); Config's paths are
// from its root. The file system must be one GRUB's save_env can write:
// a plain partition (no LVM or RAID), not sparse, no checksums over file data.
//
// # What the script does
//
//  1. insmod Modules; if "serial --unit=0 --speed=115200" succeeds, terminal
//     input and output go to console and serial (the VM tests read ttyS0;
//     under OVMF the firmware mirrors the console to serial too, so lines
//     may show twice). timeout=0, timeout_style=hidden: GRUB 2.06 polls the
//     keyboard once, and only an Esc or F4 already waiting, or Shift held
//     down, shows the menu; otherwise it boots at once.
//  2. The wanted slot starts as a, mode noslot. stagehand_choose first checks
//     that "[ x = y ]" is false: GRUB 2.06 runs an unknown command as a
//     success, so without the test module every condition would be true.
//     Then load_env -f Env reads only stagehand_slot, stagehand_trial and
//     stagehand_tries (a whitelist: nothing else in grubenv can set GRUB
//     variables). A missing or invalid grubenv leaves them empty.
//  3. stagehand_slot a or b: that slot, mode good. Anything else: slot a,
//     mode noslot.
//  4. stagehand_trial a or b and stagehand_tries exactly "1" to "9": the
//     count goes one down by string comparison (a ladder of elifs, no
//     arithmetic: stock GRUB has none), and save_env -f Env stagehand_tries
//     writes it. The trial slot boots (mode trial) only if save_env
//     succeeded and load_env, read back, gives the new count. Otherwise the
//     slot of step 3 boots, mode nosave: a GRUB that cannot write its
//     environment never boots a trial, let alone forever. The count stays one
//     digit, so save_env rewrites bytes in place, in grubenv's first sector.
//     A trial given N tries is booted N times by GRUB; stagehand_tries 0 or
//     anything else (unparseable, empty) is no trial due: the slot of step 3
//     boots, and its prestage, seeing the trial failed, rolls it back.
//  5. Menu entry 0 is slot a, entry 1 slot b; default is the wanted slot and
//     fallback the other. Each entry checks that its kernel and initramfs
//     exist and are not empty ([ -s ]), loads them with linux and initrd and
//     boots; an entry that fails to load returns, and GRUB goes on to the
//     fallback entry (fallback acts only on a failed load, not on a kernel
//     that panics: counting covers that). An initrd that fails after its
//     kernel loaded still boots the kernel (GRUB has no command to unload it).
//
// # What the booted kernel is told
//
// Each entry passes the slot's Cmdline, then stagehand.slot=a|b (SlotParam),
// then stagehand.grub=MODE:WANT:RAN (ChoiceParam): MODE is trial, good,
// nosave or noslot (steps 2 to 4), WANT the slot the script chose, RAN the
// entries GRUB ran this boot, in order, the last being this one. Prestage
// tells the boots apart with them:
//
//   - a trial boot from GRUB: MODE trial and stagehand.slot = WANT (grubenv
//     holds the tries left after this one);
//   - a good boot: MODE good (or noslot) and stagehand.slot = WANT; with a
//     trial in grubenv and tries 0, the trial failed;
//   - nosave: GRUB could not write grubenv: the trial cannot be counted and
//     should be given up with that reason;
//   - stagehand.slot != WANT: not what the script chose; RAN of two letters
//     (WANT first) is GRUB's fallback after WANT failed to load, RAN of one
//     is an entry picked by hand in the menu.
//
// A kexec bypasses GRUB: prestage counts the trial down itself before it.
//
// # Limits
//
// Paths and command lines must be ASCII without quotes, backslashes or
// control characters (GRUB's linux command would escape quotes with a
// backslash the kernel keeps); Render refuses the rest. Because the
// command lines are in the file, installing a slot rewrites grub.cfg.
package grub
