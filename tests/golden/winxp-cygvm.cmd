@echo off
rem Written by cygvm: the first logon of XP/2003 (winnt.sif [GuiRunOnce]).
rem Finds the Cygwin ISO by its marker, never by a fixed drive letter.
for %%d in (D E F G H I J K L M N O P Q R S T U V W X Y Z) do if exist %%d:\CYGVM.TAG (call %%d:\cygvm\firstlogon.cmd %%d: cygvm-0123456789abcdef & goto :eof)
if not exist C:\cygvm\ mkdir C:\cygvm
>C:\cygvm\status.txt echo failed: find-cygwin-iso
shutdown.exe -s -t 0
