// Package grub renders the fixed, stagehand-owned grub.cfg that picks slot a
// or b from grubenv, with boot counting, on Debian's stock GRUB 2.06, and is
// the boot.Backend (Loader) that writes it, grubenv and the slots. Putting
// GRUB itself on a disk is package grub/install's.
//
// # Where it runs
//
// grub.cfg and grubenv (Config.Env) lie side by side on the boot file system:
// the ESP's FAT on UEFI, a small FAT or ext2 boot partition on BIOS; so do
// the slots' kernels, initramfs and slot.cfg files (Config.A, Config.B).
// GRUB's $root must name that file system when the script runs (the core
// image's prefix, or a stub that sets root and runs configfile); Config's
// paths are from its root. The file system must be one GRUB's save_env can
// write: a plain partition (no LVM or RAID), not sparse, no checksums over
// file data.
//
// The script is the same whatever the slots hold: no command line is in
// it. Each slot's command line is in its slot.cfg, which the slot's entry
// sources (step 6). So grub.cfg is written when stagehand is installed or
// upgraded, and never when a slot is: on an unmounted FAT a file rewritten
// in place could be torn by a power cut, and GRUB reads the FAT before
// anything could repair it.
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
//  5. probe --part-uuid "$root" tells the GPT partition GUID of the
//     partition the script runs from, lower-case; for a device that is no
//     partition it says none, and on an MBR disk DISKSIG-NN, which is no
//     GUID either. Unless it fails or says none, the entries pass it on
//     (PartUUIDParam).
//  6. Menu entry 0 is slot a, entry 1 slot b; default is the wanted slot and
//     fallback the other. Each entry unsets the variables a slot.cfg sets
//     (those of the other slot's entry, run before it, among them),
//     sources its slot's slot.cfg unless it is missing or empty ([ -s ]),
//     and goes on only if that set stagehand_ready to the slot's letter:
//     slot.cfg's last line, which a file cut short while it was written
//     lacks (a quote cut open is a syntax error, which GRUB prints). It
//     then checks that the kernel and initramfs exist and are not empty
//     ([ -s ]), loads them with linux and initrd and boots; an entry that
//     fails returns, and GRUB goes on to the fallback entry (fallback acts
//     only on a failed load, not on a kernel that panics: counting covers
//     that). An initrd that fails after its kernel loaded still boots the
//     kernel (GRUB has no command to unload it). A slot is installed
//     neither the default nor on trial, so a cut then leaves at worst a
//     fallback that does not boot.
//
// # What the booted kernel is told
//
// Each entry passes the slot's command line, the words of slot.cfg's
// stagehand_cmdline (a variable the entry expands unquoted: GRUB splits it
// at the spaces, and expands nothing in the words), then stagehand.slot=a|b
// (SlotParam), then stagehand.grub=MODE:WANT:RAN (ChoiceParam), then
// stagehand.partuuid=GUID (PartUUIDParam, step 5) if probe told it: MODE is
// trial, good, nosave or noslot (steps 2 to 4), WANT the slot the script
// chose, RAN the entries GRUB ran this boot, in order, the last being this
// one. Prestage finds the disk it booted from by the GUID (a BIOS has no
// EFI variables, and GRUB sets no LoaderDevicePartUUID), and tells the
// boots apart with the rest:
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
// A kexec bypasses GRUB: prestage counts the trial down itself before it,
// and the command line it passes (Loader.Slots) carries this boot's
// stagehand.grub= and stagehand.partuuid= on.
//
// # Limits
//
// Paths and command lines must be ASCII without quotes, backslashes or
// control characters (GRUB's linux command would escape quotes with a
// backslash the kernel keeps); Render refuses such paths, and the Loader
// such command lines. A version in slot.cfg may be any printable UTF-8 but
// quotes and backslashes. The script loads no regexp module, which would
// expand wildcards in the command line's words.
package grub
